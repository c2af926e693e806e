"""The pdmd_lab Gradio app: ``python -m app.app``."""
