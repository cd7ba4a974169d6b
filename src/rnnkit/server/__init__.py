"""``rnnkit serve``: an HTTP server and web playground for any bundle, built on the task contract.

Needs the ``serve`` extra (FastAPI, uvicorn): ``pip install 'rnnkit[serve]'``. See :mod:`.app`
for the routes and :mod:`.batcher` for how concurrent generations are stepped together.
"""

from .app import create_app
from .limits import Limits

__all__ = ["Limits", "create_app"]
