"""The measuring core: pure Python, importable without Textual, torch or pynvml."""
