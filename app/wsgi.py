"""gunicorn's entry point (`app.wsgi:application`): the only module that builds the app at import."""

from app import create_app

application = create_app()
