"""The `ssl-pipeline` command line (also `python -m ssl_pipeline`): main.py parses and reports
errors; every subcommand is one plug-in module in commands/."""
