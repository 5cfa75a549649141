"""The SuperLink's door for SuperNodes: a TLS reverse proxy that passes the Fleet API and nothing else.

    python -m mirror_app.deploy.proxy --listen 0.0.0.0:9092 --superlink 127.0.0.1:9093 \\
        --certfile certs/server.pem --keyfile certs/server.key --ca certs/ca.crt

Flower 1.42 serves three APIs over one HTTPS port (``--host``, ``--port``): the Fleet API, which SuperNodes call
(``/v1/fleet/...``); the Control API, which ``flwr run``, ``flwr ls``, ``flwr stop`` and ``flwr supernode register``
call (``/v1/control/...``); and the Runtime API of ServerApp tasks (``/v1/runtime/...``). Its open-source Control
API authenticates nobody, and TLS only proves the server to the client: whoever reaches that port and trusts the CA
(every device holds ``ca.crt``) could register node keys, list nodes, start a run (app code on the server and every
node) or stop one, and the Runtime API hands a pending ServerApp task, with its token, to whoever asks first.

So the SuperLink listens on 127.0.0.1 only, and this proxy is the one port the devices reach: it terminates TLS
with the SuperLink's certificate (made for the server's public name) and forwards ``POST /v1/fleet/<route>`` for
the routes a SuperNode uses (:data:`FLEET_ROUTES`) to the SuperLink, verifying the SuperLink's certificate against
the CA; every other path answers 404 without reaching it. The operator reaches the Control API on the server
itself, or through an SSH tunnel to its loopback port (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

# what a Flower 1.42 SuperNode calls (flwr/supernode/fleet_http_client.py), all POST under /v1/fleet/
FLEET_ROUTES = (
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer"}


def make_app(superlink: str, ca: str | Path):
    """The proxy's ASGI app: Fleet routes forwarded to ``https://<superlink>`` (its certificate checked against
    ``ca``), everything else 404."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # no kept-alive upstream connections: a SuperLink that restarts is not held up by one
    upstream = httpx.AsyncClient(
        base_url=f"https://{superlink}",
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=httpx.Timeout(120.0),
        limits=httpx.Limits(max_keepalive_connections=0),
    )

    async def fleet(request: Request) -> Response:
        route = request.path_params["route"]
        if route not in FLEET_ROUTES:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            reply = await upstream.post(f"/v1/fleet/{route}", content=await request.body(), headers=headers)
        except httpx.HTTPError as exc:
            return JSONResponse({"detail": f"SuperLink unreachable: {type(exc).__name__}"}, status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    async def refuse(request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/v1/fleet/{route}", fleet, methods=["POST"]),
            Route("/{path:path}", refuse, methods=methods),
        ]
    )


def _address(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{flag} {text!r} is invalid: host:port, e.g. 0.0.0.0:9092")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirror_app.deploy.proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="0.0.0.0:9092", help="where SuperNodes connect (host:port)")
    p.add_argument("--superlink", default="127.0.0.1:9093", help="the SuperLink's loopback address (host:port)")
    p.add_argument("--certfile", required=True, help="the certificate SuperNodes see (the server's public name)")
    p.add_argument("--keyfile", required=True, help="its private key")
    p.add_argument("--ca", required=True, help="the CA that signed the SuperLink's certificate")
    args = p.parse_args(argv)
    try:
        host, port = _address(args.listen, "--listen")
        _address(args.superlink, "--superlink")
        for flag, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile), ("--ca", args.ca)):
            if not Path(path).is_file():
                raise ValueError(f"{flag} {path!r}: no such file")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"Fleet API only: https://{host}:{port}/v1/fleet/* -> https://{args.superlink} (everything else 404)")
    uvicorn.run(
        make_app(args.superlink, args.ca),
        host=host,
        port=port,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
