"""A TCP proxy on loopback that the test controls: it forwards bytes between its clients and
one upstream address, and on command cuts the link, restores it, delays or trickles bytes.

    with FaultProxy("127.0.0.1:50051") as proxy:
        use(proxy.address)
        proxy.cut()           # a partition: nothing passes, connections stay open
        proxy.restore()       # held bytes flow again, as after TCP retransmission
        proxy.cut(reset=True) # every connection reset, new ones refused until restore()
        proxy.delay(0.05)     # each forwarded chunk waits 50 ms
        proxy.trickle(16, 0.01)  # at most 16 bytes per chunk, 10 ms apart

Each connection is two pump threads (one per direction); a cut pauses them with the bytes
they hold, which is what a dropped link does to the endpoints: writes stay queued, nothing
is lost, nothing arrives.  Only loopback addresses are accepted.
"""
import ipaddress
import socket
import struct
import threading
import time

CHUNK = 65536


def _loopback(host):
    return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` ("host:port", loopback only)."""

    def __init__(self, upstream):
        host, port = upstream.rsplit(":", 1)
        if not _loopback(host):
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream}")
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._open = threading.Event()
        self._open.set()
        self._refusing = False
        self._delay_s = 0.0
        self._chunk = CHUNK
        self._closed = False
        self._lock = threading.Lock()
        self._pairs = []
        self._threads = []
        self.connections_accepted = 0
        self.connections_reset = 0
        self.bytes_forwarded = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="fault-proxy-accept")
        self._acceptor.start()

    # -- control ---------------------------------------------------------------------------

    def cut(self, reset=False):
        """Stops every byte.  ``reset``: also resets every open connection (RST) and refuses
        new ones until restore(); otherwise connections stay open and silent."""
        self._open.clear()
        if reset:
            self._refusing = True
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for pair in pairs:
                for sock in pair:
                    _abort(sock)
                self.connections_reset += 1

    def restore(self):
        """Lets bytes (held ones first) and new connections through again."""
        self._refusing = False
        self._open.set()

    def delay(self, seconds):
        """Every forwarded chunk waits ``seconds`` first (0: no delay)."""
        self._delay_s = float(seconds)

    def trickle(self, chunk_bytes, pause_s):
        """Forwards at most ``chunk_bytes`` at a time, ``pause_s`` apart (slowloris-style)."""
        self._chunk = max(1, int(chunk_bytes))
        self._delay_s = float(pause_s)

    def smooth(self):
        """Back to full-speed forwarding."""
        self._chunk = CHUNK
        self._delay_s = 0.0

    @property
    def open_connections(self):
        with self._lock:
            return len(self._pairs)

    def close(self):
        self._closed = True
        self._open.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _abort(sock)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- forwarding ------------------------------------------------------------------------

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            if self._refusing:
                _abort(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _abort(client)
                continue
            for sock in (client, server):
                sock.settimeout(0.1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, server)
            with self._lock:
                self._pairs.append(pair)
                self.connections_accepted += 1
            for source, sink in ((client, server), (server, client)):
                thread = threading.Thread(target=self._pump, args=(pair, source, sink),
                                          daemon=True, name="fault-proxy-pump")
                self._threads.append(thread)
                thread.start()

    def _pump(self, pair, source, sink):
        try:
            while not self._closed:
                self._open.wait()
                try:
                    data = source.recv(self._chunk)
                except socket.timeout:
                    continue
                if not data:
                    break
                while data and not self._closed:
                    # A cut that comes while bytes are held keeps them until restore().
                    self._open.wait()
                    if self._delay_s:
                        time.sleep(self._delay_s)
                    piece, data = data[:self._chunk], data[self._chunk:]
                    _send_all(sink, piece)
                    self.bytes_forwarded += len(piece)
        except OSError:
            pass
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            for sock in pair:
                _abort(sock)


def _send_all(sock, data):
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except socket.timeout:
            continue
        view = view[sent:]


def _abort(sock):
    """Closes with RST (linger 0), as a reset link does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
