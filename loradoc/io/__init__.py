"""Reading and writing files: safetensors, adapter snapshots and configs, guarded outputs."""
