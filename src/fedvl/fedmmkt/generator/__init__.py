"""The server's text-to-image model (diffusers UNet conditioned on MiniLM text) and its judge."""
