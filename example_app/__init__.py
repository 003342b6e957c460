"""The users API of the tutorial, on fastapi_dbpool: ``python -m example_app`` serves it."""
