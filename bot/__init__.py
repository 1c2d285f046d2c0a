"""ollacord: a Discord bot that streams replies from your own Ollama server."""
