"""AWS credentials for signing: from the config, or botocore's chain run off the reactor."""

from __future__ import annotations

import os
import sys
import tempfile

from botocore.exceptions import ProfileNotFound
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txgateway.plugins.bedrock.aws import AwsCredentials, CredentialsUnavailable

#: A ``credential_process`` that hands out a new key each run, expiring in five minutes:
#: inside botocore's refresh windows, so every use asks for a refresh.
PROCESS = """
import datetime, json, sys
path = sys.argv[1]
runs = int(open(path).read()) if __import__("os").path.exists(path) else 0
open(path, "w").write(str(runs + 1))
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKIDPROCESS{runs}", "SecretAccessKey": "s",
                  "SessionToken": "t", "Expiration": expiry.isoformat()}))
"""
HIDDEN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
          "AWS_WEB_IDENTITY_TOKEN_FILE")


class AwsCredentialsTests(TestCase):
    def setUp(self) -> None:
        """botocore's chain sees only this test's config file: no real AWS is looked at."""
        self.directory = tempfile.mkdtemp()
        script = os.path.join(self.directory, "process.py")
        with open(script, "w") as file:
            file.write(PROCESS)
        config = os.path.join(self.directory, "config")
        with open(config, "w") as file:
            file.write(f"[profile rotating]\ncredential_process = {sys.executable} {script} "
                       f"{os.path.join(self.directory, 'runs')}\n")
        environment = {"AWS_CONFIG_FILE": config,
                       "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.directory, "none"),
                       "AWS_EC2_METADATA_DISABLED": "true"}
        for name in (*HIDDEN, *environment):
            value = os.environ.get(name)
            self.addCleanup(os.environ.__setitem__ if value is not None
                            else lambda n, _: os.environ.pop(n, None), name, value)
        for name in HIDDEN:
            os.environ.pop(name, None)
        os.environ.update(environment)

    def test_static(self) -> None:
        credentials = AwsCredentials(reactor, "AKID", "secret", "token")
        self.assertIsNone(credentials.wait())
        self.assertEqual(credentials.frozen()[:3], ("AKID", "secret", "token"))

    async def test_refreshed_in_the_background(self) -> None:
        """A refresh runs in a thread: meanwhile requests are signed with the current keys."""
        credentials = AwsCredentials(reactor, profile="rotating")
        with self.assertRaises(CredentialsUnavailable):
            credentials.frozen()
        await credentials.wait()
        first = credentials.frozen()
        self.assertTrue(first.access_key.startswith("AKIDPROCESS"))
        self.assertEqual(credentials.frozen(), first, "the refresh did not block the caller")
        for _ in range(500):
            if credentials.frozen().access_key != first.access_key:
                break
            await deferLater(reactor, 0.01)
        self.assertNotEqual(credentials.frozen().access_key, first.access_key)
        while credentials._looking:  # the refresh it asked for again ends within the test
            await deferLater(reactor, 0.01)

    async def test_nothing_found(self) -> None:
        credentials = AwsCredentials(reactor)
        await credentials.wait()
        with self.assertRaises(CredentialsUnavailable) as raised:
            credentials.frozen()
        self.assertIn("no AWS credentials were found", str(raised.exception))
        self.assertEqual(raised.exception.status, 503)
        await credentials.wait()

    async def test_lookup_failure(self) -> None:
        credentials = AwsCredentials(reactor, profile="absent")
        await credentials.wait()
        with self.assertRaises(CredentialsUnavailable) as raised:
            credentials.frozen()
        self.assertIn("absent", str(raised.exception))
        await credentials.wait()
        self.assertEqual(len(self.flushLoggedErrors(ProfileNotFound)), 2)
