"""Data stage: load sources into `app`, extract a snapshot, the data-quality gate (+ drift and its store), prepare sequences."""
