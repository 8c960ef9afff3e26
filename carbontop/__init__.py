"""carbontop: what LLM inference costs in energy and carbon, measured on the GPU it runs on."""

import logging

__version__ = "0.1.0"

# Modules log what they swallow (logging.getLogger(__name__)); a sweep writes it to its run's log
# (sweep/runner.py), an engine child to engine.log. Elsewhere it goes nowhere: never onto the
# terminal the app draws on.
logging.getLogger(__name__).addHandler(logging.NullHandler())
