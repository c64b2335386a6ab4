"""Runs the venv's console commands for the tests in forked children of one process that imported torch once.

A test's ``run("onmt_lma_train", ...)`` costs ~2 s of ``import torch`` and OpenNMT-py before the command does
anything, most of a tiny test's time.  This process imports them once (not onmt_lma: the plugin patches
OpenNMT-py on import, and ``onmt_train`` must run unpatched), then for each request forks a child that
becomes the command: the test's working folder and environment, ``sys.argv`` as the console script's, the
script run as ``__main__``, stdin from /dev/null, stdout and stderr to files, the script's exit status (an
uncaught exception prints its traceback and exits 1, as Python does).  A child is a fresh process for everything the command
does; only the imports are shared.  conftest.run falls back to a plain subprocess when
``LMA_TEST_FORK=0`` or this server cannot start.

Protocol, one JSON line each way on stdin/stdout: ``{"argv", "cwd", "env", "out", "err", "timeout"}`` ->
``{"returncode"}``.
"""

import json
import os
import runpy
import signal
import sys
import time


#: imported once here, before any fork (never onmt_lma)
PRELOADED = ("numpy", "sacrebleu", "torch", "yaml", "onmt.bin.build_vocab", "onmt.bin.train", "onmt.bin.translate")


def preload():
    import importlib

    for module in PRELOADED:
        importlib.import_module(module)


def python_script(path):
    """Whether ``path`` is a script that runs with Python (a ``#!...python`` first line)."""
    with open(path, "rb") as script:
        first = script.readline(200)
    return first.startswith(b"#!") and b"python" in first


def become(request):
    """In the forked child: run the command and exit with its status (never returns)."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(sys.argv[0])  # as a console script: its own folder first
        if not python_script(sys.argv[0]):
            raise SystemExit(f"command_server: {sys.argv[0]} is not a Python console script")
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")  # what executing the script does
            code = 0
        except SystemExit as done:
            if done.code is None:
                code = 0
            elif isinstance(done.code, int):
                code = done.code
            else:
                print(done.code, file=sys.stderr)
                code = 1
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: B902 - the child reports everything as a Python process would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def threads():
    return len(os.listdir("/proc/self/task"))


def serve():
    preload()
    if threads() != 1:  # forking a process with threads could copy a held lock
        print(json.dumps({"error": f"{threads()} threads after the imports"}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            become(request)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                _, status = os.waitpid(child, 0)
                break
            time.sleep(0.01)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
