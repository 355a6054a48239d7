"""The web page (gradio): what the app does for each event, and the page that wires them.

==============  ======================================================================
module          job
==============  ======================================================================
``events``      :class:`App`: the settings, the models and every event's handler (the
                API's ``/predict``, ``/predict_views``, ``/details`` ..., the page's runs
                and redraws); views come from :mod:`mtan.serve` (no gradio there)
``layout``      :func:`build`: the Blocks tree, top to bottom, and which event runs what;
                :func:`limit_mcp_tools`: the MCP server offers the app's one tool
==============  ======================================================================
"""
from mtan.serve.web.events import App
from mtan.serve.web.layout import build, limit_mcp_tools

__all__ = ["App", "build", "limit_mcp_tools"]
