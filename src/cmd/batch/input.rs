//! The input of `faasd invoke --batch`: one payload per line, read twice. The first pass counts
//! the lines and checks each one, so a bad line refuses the whole batch before any task is
//! queued and the progress bar knows its total; the second cuts the lines into request bodies.
//! Standard input cannot be read twice, so it is first copied to an unnamed temporary file:
//! memory stays bounded whatever the input's size.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};

use anyhow::Context;
use base64::Engine;

use crate::cmd::exit;

/// How lines become payloads.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    /// Each line is the standard base64 of its payload (for payloads that hold newlines).
    pub base64: bool,
    /// The largest request body the server takes (`serve --max-body`): one line's element,
    /// with its newline, must fit in it.
    pub limit_bytes: usize,
}

/// Opens the batch's input: the file `source`, or for `-` a temporary copy of standard input.
pub fn open(source: &str) -> anyhow::Result<File> {
    let usage = |e: anyhow::Error| exit::coded(exit::USAGE, format!("{e:#}"));
    if source != "-" {
        return File::open(source)
            .with_context(|| format!("cannot read the batch file {source}"))
            .map_err(usage);
    }
    let mut spool = tempfile::tempfile().context("cannot create a file to hold standard input")?;
    std::io::copy(&mut std::io::stdin().lock(), &mut spool)
        .context("cannot read the batch from standard input")
        .map_err(usage)?;
    spool
        .rewind()
        .context("cannot read back the copy of standard input")?;
    Ok(spool)
}

/// Reads the whole input once: checks every line and returns how many there are. The file is
/// left at its start.
pub fn scan(file: &mut File, format: LineFormat) -> anyhow::Result<usize> {
    let mut reader = BufReader::new(&mut *file);
    let mut line = Vec::new();
    let mut count = 0;
    while let Some(len) = read_line(&mut reader, &mut line, format.limit_bytes)? {
        count += 1;
        check(&line, len, count, format)?;
    }
    file.rewind().context("cannot read the batch again")?;
    Ok(count)
}

/// Refuses line `number` (from 1) of `len` bytes, held in `line` unless over the limit, when it
/// is not valid base64 (with `--base64`) or its element does not fit in one request.
fn check(line: &[u8], len: usize, number: usize, format: LineFormat) -> anyhow::Result<()> {
    let over = |size: usize| {
        exit::coded(
            exit::USAGE,
            format!(
                "line {number} of the batch is over the size limit: {size} bytes, and the \
                 server takes at most {} bytes per request (serve --max-body); nothing was \
                 submitted",
                format.limit_bytes
            ),
        )
    };
    if len > line.len() {
        return Err(over(len));
    }
    if format.base64 {
        base64::engine::general_purpose::STANDARD
            .decode(line.trim_ascii())
            .map_err(|e| {
                exit::coded(
                    exit::USAGE,
                    format!(
                        "line {number} of the batch is not base64 (--base64): {e}; nothing \
                         was submitted"
                    ),
                )
            })?;
    }
    let size = element(line, format.base64).len() + 1;
    if size > format.limit_bytes {
        return Err(over(size));
    }
    Ok(())
}

/// Reads the next line into `line` without its newline; returns its length, or `None` at the
/// end. A line longer than `cap` is skipped past: `line` then holds only its first `cap` bytes,
/// and the length returned is the whole line's.
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> anyhow::Result<Option<usize>> {
    line.clear();
    let read = |e| anyhow::Error::new(e).context("cannot read the batch");
    let n = reader
        .by_ref()
        .take(cap as u64 + 1)
        .read_until(b'\n', line)
        .map_err(read)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(line.len()));
    }
    // Over the cap (or the last line, without a newline): count the rest without keeping it.
    let mut len = line.len();
    loop {
        let buf = reader.fill_buf().map_err(read)?;
        if buf.is_empty() {
            break;
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(end) => {
                len += end;
                reader.consume(end + 1);
                break;
            }
            None => {
                let taken = buf.len();
                len += taken;
                reader.consume(taken);
            }
        }
    }
    line.truncate(cap);
    Ok(Some(len))
}

/// The batch element (one NDJSON line) of a payload line: a JSON string when it is UTF-8 text,
/// else `{"payload_base64": ...}`; with `--base64` the line is that base64 already.
pub fn element(line: &[u8], base64_line: bool) -> Vec<u8> {
    let object = |encoded: &str| format!(r#"{{"payload_base64":"{encoded}"}}"#).into_bytes();
    if base64_line {
        // Checked by `scan`: standard base64, which needs no JSON escaping.
        return object(&String::from_utf8_lossy(line.trim_ascii()));
    }
    match std::str::from_utf8(line) {
        Ok(text) => serde_json::to_vec(text).unwrap_or_else(|_| object("")),
        Err(_) => object(&base64::engine::general_purpose::STANDARD.encode(line)),
    }
}

/// One request's worth of lines: an NDJSON body.
#[derive(Debug)]
pub struct Chunk {
    /// The index (from 0) of its first line.
    pub first: usize,
    /// How many lines it holds.
    pub count: usize,
    /// The NDJSON body.
    pub body: Vec<u8>,
}

/// Cuts a scanned input into chunks of at most `max_count` lines and `limit_bytes` bytes.
pub struct Chunks {
    reader: BufReader<File>,
    format: LineFormat,
    max_count: usize,
    next: usize,
    /// An element read but not yet placed: it did not fit in the last chunk.
    held: Option<Vec<u8>>,
}

impl Chunks {
    /// Chunks over `file`, which [`scan`] has checked.
    pub fn new(file: File, format: LineFormat, max_count: usize) -> Chunks {
        Chunks {
            reader: BufReader::new(file),
            format,
            max_count: max_count.max(1),
            next: 0,
            held: None,
        }
    }

    /// The next chunk, or `None` at the end.
    pub fn next_chunk(&mut self) -> anyhow::Result<Option<Chunk>> {
        let mut chunk = Chunk {
            first: self.next,
            count: 0,
            body: Vec::new(),
        };
        let mut line = Vec::new();
        while chunk.count < self.max_count {
            let element = match self.held.take() {
                Some(element) => element,
                None => match read_line(&mut self.reader, &mut line, self.format.limit_bytes)? {
                    Some(_) => element(&line, self.format.base64),
                    None => break,
                },
            };
            if chunk.count > 0 && chunk.body.len() + element.len() + 1 > self.format.limit_bytes {
                self.held = Some(element);
                break;
            }
            chunk.body.extend_from_slice(&element);
            chunk.body.push(b'\n');
            chunk.count += 1;
        }
        self.next += chunk.count;
        Ok((chunk.count > 0).then_some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(content).expect("write");
        f.rewind().expect("rewind");
        f
    }

    fn format(base64: bool, limit_bytes: usize) -> LineFormat {
        LineFormat {
            base64,
            limit_bytes,
        }
    }

    fn chunks(content: &[u8], format: LineFormat, max_count: usize) -> Vec<Chunk> {
        let mut f = file(content);
        scan(&mut f, format).expect("valid");
        let mut chunks = Chunks::new(f, format, max_count);
        std::iter::from_fn(|| chunks.next_chunk().expect("chunk")).collect()
    }

    #[test]
    fn each_line_is_one_payload_and_a_last_newline_adds_none() {
        let mut f = file(b"a\n\nc\n");
        assert_eq!(scan(&mut f, format(false, 100)).expect("scan"), 3);
        let mut f = file(b"a\nb");
        assert_eq!(scan(&mut f, format(false, 100)).expect("scan"), 2);
        let mut f = file(b"");
        assert_eq!(scan(&mut f, format(false, 100)).expect("scan"), 0);
        let got = chunks(b"a\n\n\"q\"\n\xff\x00", format(false, 100), 10);
        assert_eq!(got.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&got[0].body),
            "\"a\"\n\"\"\n\"\\\"q\\\"\"\n{\"payload_base64\":\"/wA=\"}\n"
        );
    }

    #[test]
    fn chunks_hold_at_most_max_count_lines_and_limit_bytes() {
        let input: Vec<u8> = (0..10)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let by_count = chunks(&input, format(false, 1000), 4);
        let counts: Vec<(usize, usize)> = by_count.iter().map(|c| (c.first, c.count)).collect();
        assert_eq!(counts, [(0, 4), (4, 4), (8, 2)]);
        // Each element is `"N"\n`: 4 bytes; 9 bytes hold two.
        let by_bytes = chunks(&input, format(false, 9), 100);
        assert!(by_bytes.iter().all(|c| c.count == 2 && c.body.len() <= 9));
        assert_eq!(by_bytes.len(), 5);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_by_number() {
        let mut input = b"ok\nok\n".to_vec();
        input.extend(vec![b'x'; 50]);
        input.extend(b"\nok\n");
        let err = scan(&mut file(&input), format(false, 20)).expect_err("too big");
        assert_eq!(exit::code_of(&err), exit::USAGE);
        let message = format!("{err:#}");
        assert!(message.starts_with("line 3 of the batch is over the size limit: 50 bytes"));
        // The encoded element counts: 18 bytes of text are 21 once quoted with a newline.
        let err = scan(&mut file(&[b'y'; 18]), format(false, 20)).expect_err("too big");
        assert!(format!("{err:#}").contains("line 1 "), "{err:#}");
    }

    #[test]
    fn base64_lines_are_checked_and_passed_through() {
        let err = scan(&mut file(b"eA==\n%%\n"), format(true, 100)).expect_err("bad");
        assert!(format!("{err:#}").starts_with("line 2 of the batch is not base64"));
        let got = chunks(b"eA==\r\nAAo=\n", format(true, 100), 10);
        assert_eq!(
            String::from_utf8_lossy(&got[0].body),
            "{\"payload_base64\":\"eA==\"}\n{\"payload_base64\":\"AAo=\"}\n"
        );
    }
}
