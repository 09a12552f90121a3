"""jslm-chat: a Japanese-first browser chat for Japanese StableLM instruct models."""

__version__ = "0.1.0"
