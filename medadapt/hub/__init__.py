"""The Hugging Face Hub client over the local save format (:mod:`medadapt.saves`): push, pull, model card."""
