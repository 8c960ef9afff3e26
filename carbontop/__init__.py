"""carbontop: what LLM inference costs in energy and carbon, measured on the GPU it runs on."""

__version__ = "0.1.0"
