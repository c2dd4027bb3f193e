"""benches/chaos/backends.py: the TCP echo backend of pool `dev` (`soak.py tcp-backend`).

Each line comes back as `ID: line`. A connection whose first line starts with `GET ` or
`HEAD ` gets `HTTP/1.1 200 OK` and is closed, so tether's `kind: http` health check on
`/healthz` works (a TCP check would pass against a SIGSTOPped process: the kernel still
accepts its connections)."""
import asyncio


async def tcp_backend(ident, listen):
    host, port = listen.rsplit(":", 1)
    prefix = f"{ident}: ".encode()

    async def handle(r, w):
        try:
            first = await r.readline()
            if first.startswith((b"GET ", b"HEAD ")):
                while True:
                    line = await r.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                body = b"ok\n" if first.startswith(b"GET") else b""
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                        b"Connection: close\r\n\r\n" + body)
                await w.drain()
                return
            line = first
            while line.endswith(b"\n"):
                w.write(prefix + line)
                await w.drain()
                line = await r.readline()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            try:
                w.close()
            except Exception:
                pass

    server = await asyncio.start_server(handle, host, int(port), backlog=1024, reuse_address=True)
    print(f"tcp-backend {ident} listening on {listen}", flush=True)
    async with server:
        await server.serve_forever()
