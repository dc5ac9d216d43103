"""Seed a freshly migrated instance (run once into the template database; see settings.py).

Creates what the tests and mailbridge need, the way an administrator would:
  - staff user `mailbridge` (the API needs staff) with an API token and a password,
  - non-staff user `customer` (the API answers 403 to it),
  - queues `support` (id 1) and `billing` (id 2),
  - the custom field `mailbridge_key` (staff only) that mailbridge keeps its idempotency key in.
Token and passwords come from the environment:
  MAILBRIDGE_HELPDESK_TOKEN, MAILBRIDGE_HELPDESK_PASSWORD.
Prints one JSON line describing what it created.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from helpdesk.models import CustomField, Queue  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

User = get_user_model()
token = os.environ["MAILBRIDGE_HELPDESK_TOKEN"]
password = os.environ["MAILBRIDGE_HELPDESK_PASSWORD"]

staff = User.objects.create_user(
    "mailbridge", email="mailbridge@example.test", password=password, is_staff=True
)
Token.objects.create(user=staff, key=token)
User.objects.create_user("customer", email="customer@example.test", password=password)

queues = {}
for slug, title in (("support", "Support"), ("billing", "Billing")):
    queue = Queue.objects.create(
        title=title, slug=slug, email_address=f"{slug}@example.test", allow_public_submission=False
    )
    queues[slug] = queue.id

CustomField.objects.create(
    name="mailbridge_key",
    label="mailbridge key",
    help_text="Idempotency key of the mail this ticket was opened from (set by mailbridge)",
    data_type="varchar",
    max_length=100,
    required=False,
    staff_only=True,
)

print(json.dumps({"staff_user": "mailbridge", "queues": queues, "custom_fields": ["mailbridge_key"]}))
