"""servelab: the shared plumbing of the server variants, load tests and notebooks.

No lesson is about what lives here (CLI, model loading, the job queue, HTTP details, metrics):
the ideas the suite teaches stay visible in `server_variants/*.py`.
"""

__version__ = "0.1.0"
