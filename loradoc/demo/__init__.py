"""The bundled example: tiny bases and adapters built with real transformers and peft."""
