"""The timing worker, started (`main`) and fed by `metrics.latency`.

It reads pickled requests from stdin and answers on stdout, one at a time: ("open", runtime, kwargs,
feeds by batch name), ("warm", batch, calls), ("burst", batch, calls) -> milliseconds of each timed
call after one untimed call, ("close",). Only its parent writes to its stdin, and only what that
parent made (the exported file's bytes and the recipe's inputs as arrays), so unpickling is safe here.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
from typing import Any, BinaryIO

from modelshrink.runtimes.sessions import RUNNERS

_LENGTH = struct.Struct("<Q")
MAX_MESSAGE = 2**34  # an exported file and the recipe's inputs fit; a larger length is a corrupt stream


def send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the other end closed")
    (length,) = _LENGTH.unpack(header)
    if length > MAX_MESSAGE:
        raise EOFError(f"a message of {length} bytes: the stream is corrupt")
    return pickle.loads(stream.read(length))


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    _, runtime, kwargs, batches = receive(requests)
    run = RUNNERS[runtime](**kwargs)
    send(answers, ("ok", None))
    while True:
        request = receive(requests)
        if request[0] == "close":
            return
        _, batch, calls = request
        feeds = batches[batch]
        if request[0] == "warm":
            for _ in range(calls):
                run(feeds)
            send(answers, ("ok", None))
            continue
        run(feeds)  # switching in, as the parent's own bursts do
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            run(feeds)
            times.append((time.perf_counter() - start) * 1000.0)
        send(answers, ("ok", times))


def main() -> None:
    # the answers get a private copy of the pipe, and file descriptor 1 becomes stderr: a runtime that
    # prints, from Python or natively (ONNX Runtime, OpenVINO, TBB), must not corrupt the answers
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(sys.stdin.buffer, answers)
    except Exception as exc:  # reported to the parent, which says what failed in one line
        send(answers, ("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    main()
