"""``pgcelery dashboard``: serve the web dashboard."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard (read-only unless PGCELERY_DASHBOARD_ACTIONS=true)."""
    try:
        from pgcelery.dashboard.serve import serve
    except ImportError as exc:
        print(
            f"pgcelery dashboard needs the dashboard extra ({exc.name or 'starlette'} is not "
            "installed): pip install 'pgcelery[dashboard]'",
            file=sys.stderr,
        )
        return 2
    from pgcelery.settings import Settings

    settings = Settings()
    port = args.port if args.port is not None else int(os.environ.get("PORT") or 0)
    serve(
        settings,
        host=args.host or settings.dashboard_host,
        port=port or settings.dashboard_port,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    board = sub.add_parser("dashboard", help="serve the web dashboard (DATABASE_URL)")
    board.add_argument("--host", help="address to bind (default PGCELERY_DASHBOARD_HOST)")
    board.add_argument("--port", type=int, help="port (default $PORT, PGCELERY_DASHBOARD_PORT)")
    board.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address without basic auth (a proxy authenticates)",
    )
    board.set_defaults(func=cmd_dashboard)
