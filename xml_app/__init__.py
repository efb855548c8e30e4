"""The Flask answer_url app that routes Plivo calls to the gateway (see :func:`create_app`)."""

from xml_app.app import create_app
from xml_app.server import AppServer, serve_app

__all__ = ["AppServer", "create_app", "serve_app"]
