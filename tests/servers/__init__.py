"""Servers the engine tests start on 127.0.0.1: a scripted OpenAI-style server and transformers serve."""
