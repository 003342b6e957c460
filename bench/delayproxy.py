"""``python -m bench.delayproxy``: a TCP proxy on 127.0.0.1 that delays every chunk by a fixed
time each way (a network's round trip, where the kernel has no sch_netem), and counts round
trips.

python -m bench.delayproxy --target 127.0.0.1:5432 --rtt-ms 1   (prints its ports, runs until
killed)

Threads, not asyncio: an event loop's timers fire on a 1 ms grid (epoll's timeout), so 0.5 ms
each way became ~1 ms plus a loop turn; ``time.sleep`` keeps to ~60 µs. Per connection, one
reader and one writer thread each way: the reader stamps each chunk with its due time, the
writer sends it then, in order.

A round trip is counted per connection each time the server answers after the client wrote:
client bytes, then server bytes, is one (however many TCP chunks each side took). psycopg's
BEGIN sent, then answered, then the SELECT sent and answered: two.

The control port answers one line per line it reads: ``stats`` gives JSON counters,
``delay MS`` sets the one-way delay in ms.
"""

import argparse
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from subprocess import PIPE, Popen
from typing import Any

HOST = "127.0.0.1"
Chunk = tuple[float, bytes] | None


class Proxy:
    def __init__(self, target: tuple[str, int], one_way_s: float) -> None:
        self.target = target
        self.one_way_s = one_way_s
        self.lock = threading.Lock()
        self.round_trips = 0
        self.client_chunks = 0
        self.connections = 0

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "round_trips": self.round_trips,
                "client_chunks": self.client_chunks,
                "connections": self.connections,
                "one_way_ms": self.one_way_s * 1000,
            }

    def serve(self, listener: socket.socket) -> None:
        while True:
            client, _ = listener.accept()
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
            last = ["server"]  # who sent last, on this connection
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
                threading.Thread(target=self._read, args=(src, chunks, upstream, last),
                                 daemon=True).start()  # fmt: skip
                threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: "queue.SimpleQueue[Chunk]", upstream: bool,
              last: list[str]) -> None:  # fmt: skip
        with suppress(OSError):
            while data := src.recv(65536):
                now = time.perf_counter()
                with self.lock:
                    if upstream:
                        self.client_chunks += 1
                        last[0] = "client"
                    elif last[0] == "client":
                        self.round_trips += 1
                        last[0] = "server"
                chunks.put((now + self.one_way_s, data))
        chunks.put(None)

    def _write(self, dst: socket.socket, chunks: "queue.SimpleQueue[Chunk]") -> None:
        try:
            while (item := chunks.get()) is not None:
                due, data = item
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.close()

    def control(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw") as stream:
            for line in stream:
                words = line.split()
                if words[:1] == ["delay"]:
                    self.one_way_s = float(words[1]) / 1000
                stream.write(json.dumps(self.stats()) + "\n")
                stream.flush()


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(512)
    return sock


class Control:
    """The harness's side: a running proxy process, its ports, its counters."""

    def __init__(self, process: "Popen[str]", port: int, control_port: int) -> None:
        self.process, self.port, self.control_port = process, port, control_port

    def ask(self, line: str) -> dict[str, Any]:
        with socket.create_connection((HOST, self.control_port), timeout=5) as sock:
            sock.sendall((line + "\n").encode())
            answer: dict[str, Any] = json.loads(sock.makefile().readline())
            return answer

    def stats(self) -> dict[str, Any]:
        return self.ask("stats")

    def set_rtt(self, rtt_ms: float) -> None:
        self.ask(f"delay {rtt_ms / 2}")


@contextmanager
def running(target_host: str, target_port: int, rtt_ms: float = 0.0) -> Iterator[Control]:
    """The proxy in a process of its own (its threads off the harness's and the apps' GIL),
    stopped on exit."""
    process = Popen(
        [sys.executable, "-m", "bench.delayproxy", "--target", f"{target_host}:{target_port}",
         "--rtt-ms", str(rtt_ms)], stdout=PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        words = process.stdout.readline().split()
        if words[:1] != ["READY"]:
            raise RuntimeError("bench.delayproxy did not start")
        yield Control(process, int(words[1]), int(words[2]))
    finally:
        process.terminate()
        process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.delayproxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="host:port of the server")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="added round trip, ms")
    args = parser.parse_args(argv)  # fmt: skip
    host, _, port = args.target.rpartition(":")
    if host not in (HOST, "localhost"):
        raise SystemExit("bench.delayproxy forwards to 127.0.0.1 only")
    proxy = Proxy((host, int(port)), args.rtt_ms / 2000)
    listener, control = _listen(), _listen()
    threading.Thread(target=proxy.control, args=(control,), daemon=True).start()
    print(f"READY {listener.getsockname()[1]} {control.getsockname()[1]}", flush=True)
    proxy.serve(listener)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
