"""Great Expectations suites for the extracted snapshot, one module per table.

Each module exposes `build_suite(...) -> gx.ExpectationSuite`, built in code from typed
expectations. Every expectation carries `notes` (why it exists) and a GX `severity`:
`critical` failures stop the pipeline, `warning` failures are reported but let it go on.
Shared helpers live in `expectations.common`.
"""
