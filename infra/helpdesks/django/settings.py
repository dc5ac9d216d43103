"""Settings of the throwaway django-helpdesk instance the local stack starts for tests.

A minimal Django project around the PyPI package django-helpdesk with its REST API on, on SQLite.
Everything that differs per instance comes from the environment (the local stack sets it):
  MAILBRIDGE_HELPDESK_DB          SQLite file
  MAILBRIDGE_HELPDESK_MEDIA       folder for attachments
  MAILBRIDGE_HELPDESK_MAIL_DIR    folder where the mail the helpdesk sends is written (one file each)
  MAILBRIDGE_HELPDESK_SECRET_KEY  Django's SECRET_KEY (random per instance)
Not for production: no HTTPS, DEBUG off but runserver serves it.
"""

import os

BASE_DIR = os.path.dirname(os.path.abspath(__file__))

SECRET_KEY = os.environ["MAILBRIDGE_HELPDESK_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "helpdesk",
]
SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["MAILBRIDGE_HELPDESK_DB"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

MEDIA_ROOT = os.environ["MAILBRIDGE_HELPDESK_MEDIA"]
MEDIA_URL = "/media/"
STATIC_URL = "/static/"

USE_TZ = True
TIME_ZONE = "UTC"

# The mail the helpdesk sends (acknowledgements, updates) is written to files, never sent.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ["MAILBRIDGE_HELPDESK_MAIL_DIR"]
DEFAULT_FROM_EMAIL = "helpdesk@example.test"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

# django-helpdesk
HELPDESK_TEAMS_MODE_ENABLED = False  # its default needs pinax-teams
HELPDESK_API_ENABLED = True
