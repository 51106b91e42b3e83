# faasd's Python harness: runs one function in a warm executor, speaking the warm frame protocol
# on stdin/stdout (see src/exec/warm.rs). Embedded in the faasd binary.
#
#   python3 harness.py python MODULE.py   # calls handle(payload), after init() once if defined
#   python3 harness.py python BUNDLE.tar  # the same, from module $FAASD_ENTRY (default main)
#   python3 harness.py pickle FUNC.pkl    # calls a dill-pickled callable with pickled (args, kwargs)
#   python3 harness.py serve MODULE.py    # an HTTP service: runs the module as __main__ (it
#                                         # listens on its port, or defines a WSGI or ASGI `app`
#                                         # served here); a BUNDLE.tar runs $FAASD_ENTRY
#
# Frames are a 4-byte big-endian length, then the body. The harness sends b"R" when ready (or
# b"E" + traceback if loading failed, then exits), reads b"C" + flags + payload per call (flags
# bit 0: the payload is JSON), and answers b"O" or b"X" (exception) + 4-byte result length +
# result + the call's captured stdout/stderr text.
#
# Tracebacks name the file the user registered ($FAASD_SOURCE, set by `faasd register`), not
# the bundle's path, and start at the user's code rather than in this harness.

import io
import os
import struct
import sys
import traceback

# The most log text one call returns (faasd's stderr limit); the rest is replaced by a marker.
LOG_LIMIT = 1 << 20


def unpack_bundle(bundle):
    # A directory bundle (a tar) goes into this executor's private working directory, first on
    # the import path; returns where.
    import tarfile
    target = os.path.abspath("bundle")
    with tarfile.open(bundle) as archive:
        try:
            archive.extractall(target, filter="data")
        except TypeError:  # Pythons without extraction filters
            archive.extractall(target)
    sys.path.insert(0, target)
    return target


def serve(bundle):
    # An HTTP service speaks no frames: its program runs as __main__ and listens on its port. A
    # module that returns without serving, defining a WSGI or ASGI app (`app` or `application`),
    # has that app served on the port ($FAASD_HTTP_PORT).
    import runpy
    import tarfile
    if tarfile.is_tarfile(bundle):
        target = unpack_bundle(bundle)
        os.chdir(target)
        entry = os.environ.get("FAASD_ENTRY", "main")
        names = runpy.run_module(entry, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [bundle]
        names = runpy.run_path(bundle, run_name="__main__")
    app = names.get("app") or names.get("application")
    if app is None:
        return 0
    port = int(os.environ["FAASD_HTTP_PORT"])
    if is_asgi(app):
        serve_asgi(app, port)
    else:
        serve_wsgi(app, port)
    return 0


def is_asgi(app):
    import inspect
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
    return inspect.iscoroutinefunction(call)


def serve_wsgi(app, port):
    # The standard library's WSGI server, a thread per connection.
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    make_server("127.0.0.1", port, app, server_class=Server).serve_forever()


def serve_asgi(app, port):
    try:
        import uvicorn
    except ImportError:
        sys.exit("an ASGI app needs an ASGI server: add uvicorn to the bundle's requirements.txt, "
                 "or start a server from the module's __main__")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main():
    mode, bundle = sys.argv[1], sys.argv[2]
    if mode == "serve":
        return serve(bundle)
    # Frames own the real stdout; anything the function prints goes to stderr instead.
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    # Buffered: a call's header and body usually arrive in one read.
    frames_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    pack = struct.Struct(">I").pack
    unpack = struct.Struct(">I").unpack

    def send(body):
        # One write per frame where the pipe takes it; a short write continues, never drops.
        view = memoryview(pack(len(body)) + body)
        while view:
            view = view[frames_out.write(view):]

    def read_exact(n):
        data = frames_in.read(n)
        return data if len(data) == n else None

    out = Output()
    sys.stdout = sys.stderr = out
    # What the module's import and init() print is sent with the ready frame: faasd makes it
    # the start of the first call's log. (Both frames stay under faasd's 1 MiB for them.)
    loading = out.target = Capture(LOG_LIMIT)
    try:
        call = load(mode, bundle)
    except BaseException as exc:
        out.target = sys.__stderr__
        failure = capped(user_traceback(exc).encode("utf-8", "replace"), LOG_LIMIT // 4)
        send(b"E" + loading.value(LOG_LIMIT // 4) + failure)
        return 1
    out.target = sys.__stderr__
    send(b"R" + loading.value(LOG_LIMIT // 2))

    while True:
        header = read_exact(4)
        if header is None:
            return 0
        body = read_exact(unpack(header)[0])
        if body is None or body[:1] != b"C":
            return 2
        is_json = bool(body[1] & 1)
        payload = body[2:]
        captured = out.target = Capture(LOG_LIMIT)
        trace = b""
        try:
            kind, result = b"O", call(payload, is_json)
        except BaseException as exc:  # the function's failure is the call's outcome
            # Kept whatever was printed before it: the traceback says why the call failed.
            trace = capped(user_traceback(exc).encode("utf-8", "replace"), LOG_LIMIT // 4)
            kind, result = b"X", failure_result(mode, exc)
        finally:
            out.target = sys.__stderr__
        logs = captured.value(LOG_LIMIT - len(trace)) + trace
        send(kind + pack(len(result)) + result + logs)


class Output(io.TextIOBase):
    # sys.stdout and sys.stderr for the executor's whole life. Writes go to the current target:
    # the log being captured (the load's, or the call's), else the process's stderr. So a
    # logging handler made at import, which keeps this object, writes into each call's log.
    def __init__(self):
        super().__init__()
        self.target = sys.__stderr__

    def write(self, text):
        return self.target.write(text)

    def flush(self):
        self.target.flush()

    def fileno(self):
        # For code that wants a real file (faulthandler, subprocess): the process's stderr.
        return 2

    def isatty(self):
        return False

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"


# Room kept for the marker of a cut log, so a cut log with its marker stays within the limit.
MARKER_ROOM = 96


def capped(data, limit, dropped=0):
    # `data` (of which `dropped` more bytes were not kept) in at most `limit` bytes: when cut, its
    # start and a marker saying how much was dropped.
    if len(data) <= limit and not dropped:
        return data
    keep = max(0, min(len(data), limit - MARKER_ROOM))
    dropped += len(data) - keep
    return data[:keep] + ("\n[faasd: stderr truncated, %d more bytes dropped]\n" % dropped).encode()


class Capture:
    # A call's log as it is printed: its first `limit` bytes, and a count of the rest, so a
    # function that prints gigabytes holds a megabyte, not gigabytes. Each write also goes to
    # the process's stderr, whose tail faasd keeps: a call that times out or kills its executor
    # never sends its log, and then that tail is what it printed last.
    def __init__(self, limit):
        self.parts = []
        self.room = limit
        self.dropped = 0

    def write(self, text):
        sys.__stderr__.write(text)
        data = text.encode("utf-8", "replace")
        if not self.room:
            self.dropped += len(data)
        elif len(data) <= self.room:
            self.parts.append(data)
            self.room -= len(data)
        else:
            self.parts.append(data[: self.room])
            self.dropped += len(data) - self.room
            self.room = 0
        return len(text)

    def flush(self):
        sys.__stderr__.flush()

    def value(self, limit):
        return capped(b"".join(self.parts), limit, self.dropped)


def to_bytes(value):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    import json
    try:
        return json.dumps(value).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "handle() returned a %s, which is not bytes, str, None or JSON-serializable (%s)"
            % (type(value).__name__, exc)
        ) from None


def load(mode, bundle):
    global BUNDLE_DIR
    if mode == "python":
        import importlib
        import importlib.machinery
        import importlib.util
        import tarfile
        if tarfile.is_tarfile(bundle):
            # A directory bundle: unpack it into this executor's private working directory,
            # work from there (so `open("config.json")` finds the bundle's file, as in an HTTP
            # service) and import its entry module (FAASD_ENTRY, default "main").
            BUNDLE_DIR = unpack_bundle(bundle)
            os.chdir(BUNDLE_DIR)
            module = importlib.import_module(os.environ.get("FAASD_ENTRY", "main"))
        else:
            module = load_file(bundle)
        if not hasattr(module, "handle"):
            raise RuntimeError("the module defines no handle(payload) function")
        loop = None
        if hasattr(module, "init"):
            init_result = module.init()
            if hasattr(init_result, "__await__"):
                loop = new_loop()
                loop.run_until_complete(init_result)
        handle = module.handle

        def call(payload, is_json):
            nonlocal loop
            if is_json:
                import json
                payload = json.loads(payload)
            result = handle(payload)
            # A coroutine (`async def handle`); a plain attribute look-up on the hot path.
            if hasattr(result, "__await__"):
                # `async def handle`: run on one event loop kept for the executor's life, so
                # what init() set up on it (a client session, a pool) stays usable.
                loop = loop or new_loop()
                result = loop.run_until_complete(result)
            return to_bytes(result)

        return call

    if mode == "pickle":
        import base64
        import dill
        with open(bundle, "rb") as f:
            fn = dill.load(f)

        def call(payload, is_json):
            args, kwargs = dill.loads(base64.b64decode(payload))
            result = fn(*args, **kwargs)
            return base64.b64encode(dill.dumps(result))

        return call

    raise RuntimeError("unknown harness mode %r" % mode)


def new_loop():
    import asyncio
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def load_file(bundle):
    # Bundles are cached under their hash: compile the code under the registered file's name,
    # and give linecache its lines, so tracebacks show that name with the source lines.
    import linecache
    import types
    with open(bundle, "rb") as f:
        source = f.read()
    name = os.environ.get("FAASD_SOURCE") or bundle
    code = compile(source, name, "exec", dont_inherit=True)
    lines = source.decode("utf-8", "replace").splitlines(True)
    linecache.cache[name] = (len(source), None, lines, name)
    module = types.ModuleType("handler")
    module.__file__ = bundle
    sys.modules["handler"] = module
    exec(code, module.__dict__)
    return module


# The directory a directory bundle was unpacked into, once it has been.
BUNDLE_DIR = None


def user_traceback(exc):
    # The traceback from the first frame outside this harness and the import machinery, with
    # the unpacked bundle's paths shown as the registered directory's.
    import asyncio
    import importlib
    # This harness, the import machinery, and asyncio (whose loop runs an `async def handle`).
    internal = tuple(
        [os.path.abspath(__file__)]
        + [os.path.dirname(m.__file__) + os.sep for m in (importlib, asyncio)]
    )
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(internal)
        or tb.tb_frame.f_code.co_filename.startswith("<frozen ")
    ):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    source = os.environ.get("FAASD_SOURCE")
    if BUNDLE_DIR and source:
        if source.endswith(".py"):
            # A single file sent with its requirements: the bundle holds it as one module.
            entry = os.environ.get("FAASD_ENTRY", "main").replace(".", os.sep) + ".py"
            text = text.replace(os.path.join(BUNDLE_DIR, entry), source)
        text = text.replace(BUNDLE_DIR + os.sep, source.rstrip("/") + "/")
    return text


def failure_result(mode, exc):
    # The pickle contract: a failed call's result is the serialized exception.
    if mode != "pickle":
        return b""
    import base64
    import dill
    try:
        return base64.b64encode(dill.dumps(exc))
    except BaseException:
        try:
            text = repr(exc)
        except BaseException:
            text = type(exc).__name__
        return base64.b64encode(dill.dumps(RuntimeError(text)))


if __name__ == "__main__":
    sys.exit(main())
