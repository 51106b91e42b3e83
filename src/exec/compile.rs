//! Compiling a Python module without running it, in a child interpreter: the registration's code
//! check, run by the server's interpreter or, when the server has none, by a worker's.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto::CompileVerdict;

/// The most output read from the compiler (its answer is one short JSON line).
const MAX_ANSWER_BYTES: u64 = 64 << 10;

/// Compiles the module on stdin (named by argv[1]) without running it, and prints one JSON
/// object: `{}` when it compiles and binds `handle` at top level, else what is wrong.
const COMPILE_SCRIPT: &str = r#"
import ast, json, sys
def answer(**kw):
    sys.stdout.write(json.dumps(kw))
    sys.exit(0)
def binds_handle(tree):
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "handle":
                return True
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == "handle":
                    return True
        if isinstance(node, ast.Name) and node.id == "handle" and isinstance(node.ctx, ast.Store):
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False
source = sys.stdin.buffer.read()
try:
    tree = compile(source, sys.argv[1], "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    compile(tree, sys.argv[1], "exec", dont_inherit=True)
except SyntaxError as e:
    answer(error="%s: %s" % (type(e).__name__, e.msg), line=e.lineno, column=e.offset,
           text=(e.text or "").strip()[:200])
except Exception as e:
    answer(error="%s: %s" % (type(e).__name__, str(e)[:500]))
answer() if binds_handle(tree) else answer(missing_handle=True)
"#;

/// Compiles `source` (named `file` in messages) with the interpreter `python` and returns its
/// verdict. An interpreter that cannot start, or that exits without an answer, is an error; the
/// caller bounds the wait.
pub async fn compile(python: &Path, file: &str, source: &[u8]) -> std::io::Result<CompileVerdict> {
    let mut child = tokio::process::Command::new(python)
        .args(["-I", "-S", "-B", "-c", COMPILE_SCRIPT, file])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the compiler's pipes are missing"));
    };
    let write = async move {
        // A compiler that stops reading early answers anyway; its answer decides.
        let _ = stdin.write_all(source).await;
    };
    let mut out = Vec::new();
    let mut stdout = stdout.take(MAX_ANSWER_BYTES);
    let read = stdout.read_to_end(&mut out);
    let ((), read) = tokio::join!(write, read);
    read?;
    let status = child.wait().await?;
    serde_json::from_slice(&out).map_err(|e| {
        std::io::Error::other(format!(
            "the compiler exited {status} without an answer: {e}"
        ))
    })
}
