"""The local save format: manifest, schema, transactional writes, base-weights digest, and reading/writing saves.

The Hub client (:mod:`medadapt.hub`: push, pull, model card) builds on it; nothing here touches the network.
"""
