"""Stage files: the manifest, local save/load, and (in push/pull/card) the Hugging Face Hub."""
