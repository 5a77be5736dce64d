"""`gpt124m demo`: a Gradio app for a base model and, optionally, an instruction-tuned one.

`build_app(DemoModel(...), instruct_model=...)` returns the `gr.Blocks`; `launch(app)` serves it.
Gradio is an optional extra (`pip install "gpt124m[demo]"`), imported only when an app is built.
"""

from gpt124m.demo.app import build_app, launch
from gpt124m.demo.backend import DemoInputError, DemoModel, Limits, Sampling

__all__ = ["DemoInputError", "DemoModel", "Limits", "Sampling", "build_app", "launch"]
