"""Programs layer: what the command line runs (training, benchmarks, accuracy tables, the zoo sweep), over the API."""
