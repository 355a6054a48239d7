"""MTAN demo: segmentation and depth (normals, for indoor models) from one street photo, and the
per-task attention masks that decide which shared features each task uses.

    python app.py                                   # the model in weights/, http://127.0.0.1:7860
    python app.py --model user/name --share         # a Hub model (or a folder), public link
    MTAN_MODELS=weights,user/a,user/b python app.py # several models in a dropdown

Flags: `python app.py --help` (mtan/serve/settings.py); events: mtan/serve/web/events.py; the page:
mtan/serve/web/layout.py; limits: docs/safety.md; the MCP tool for agents: docs/app.md.
"""
import json
import os
import signal
import sys
import traceback

import gradio as gr

from mtan import serve
from mtan.serve.page_text import CSS, PAGE_JS
from mtan.serve.settings import parse_args
from mtan.serve.web import App, build, limit_mcp_tools

ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
APP = App(ARGS, stop_on_error=__name__ == "__main__")  # the default model loads now; others on first use
demo = build(APP)


def _stop(signum, frame):  # the main thread closes the server (gradio's block_thread), then exits
    raise KeyboardInterrupt


if __name__ == "__main__":
    print(f"mtan app: limits: {APP.limits_line()} (docs/safety.md has them all)", flush=True)
    if os.environ.get("MTAN_LOG_LIMITS") == "json":  # for tools (benchmarks/load_test.py)
        print("mtan app limits: " + json.dumps(APP.limits), flush=True)
    share = ARGS.share and serve.host_reachable("api.gradio.app", 443, timeout=3.0)
    if ARGS.share and not share:
        print("--share: api.gradio.app is unreachable, so no public link; the app runs locally only.", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 1
    try:  # show_error=False: only our own messages reach visitors; allowed_paths: the example photos alone
        demo.launch(server_name=ARGS.host, server_port=ARGS.port, share=share, max_file_size=APP.max_file_size,
                    allowed_paths=[str(p) for p in APP.examples], show_error=False, css=CSS, js=PAGE_JS,
                    theme=gr.themes.Soft(primary_hue="indigo"), state_session_capacity=ARGS.max_sessions,
                    prevent_thread_lock=True, quiet=True, mcp_server=ARGS.mcp)  # quiet: gradio's share hint is not ours
        tools = limit_mcp_tools(demo)
        print(f"mtan app: running on {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else "") + ("" if
              share else " (a public link: --share)") + (f"; MCP tool {tools[0]} at {demo.local_url}gradio_api/mcp/"
                                                         if tools else ""), flush=True)
        APP.warm_examples()  # the real example photos run once, when the server is idle: a click answers at once
        demo.block_thread()  # until Ctrl+C or SIGTERM (gradio's own handler, where it installs one, exits too)
        exit_code = 0
    except Exception:
        traceback.print_exc()
    finally:
        print("mtan app: stopped", flush=True)
        os._exit(exit_code)  # a prediction still running in a worker thread must not keep the process alive
