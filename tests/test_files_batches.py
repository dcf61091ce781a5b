"""/v1/files and /v1/batches through a running gateway, with the openai SDK, to native fakes."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import openai
import orjson
import psycopg
import treq
from psycopg.rows import dict_row
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from tests.fake_openai_batch import BATCH_USAGE
from tests.gateway_harness import GatewayTestCase, OnPostgreSQL
from tests.test_upload_streaming import RawClient, UploadWatch, WatchedRequest, chunk

ALICE, BOB, CAROL = "sk-alice-0123456789", "sk-bob-0123456789", "sk-carol-0123456789"

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
max_body_bytes: 1048576
upstream:
  connect_timeout: 1
  first_byte_timeout: 1
  idle_timeout: 0.5
providers:
  fake:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-upstream-secret
  spare:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
  azure:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}
    api_key: azure-secret
    api: deployments
  demo:
    plugin: demo
    chunk_delay: 0
models:
  - name: cheap
    provider: fake
    model: gpt-4o-mini
  - name: smart
    provider: fake
    model: gpt-4o
  - name: elsewhere
    provider: spare
    model: gpt-4o-mini
  - name: on-azure
    provider: azure
    model: my-deployment
  - name: demo
    provider: demo
  - name: "error-*"
    provider: fake
prices:
  gpt-4o-mini:
    input: 1000000
    output: 1000000
keys:
  - name: alice
    key: {alice}
  - name: bob
    key: {bob}
  - name: carol
    key: {carol}
    budget_usd: 5
"""


def line(custom_id: str, model: str, text: str = "hi") -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions", "body": {
                             "model": model, "messages": [{"role": "user", "content": text}]}})


def jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def upload_head(length: int | None, query: bytes = b"") -> bytes:
    """A raw ``POST /v1/files`` (form boundary `BOUNDARY`) by alice, up to its body."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (b"POST /v1/files" + query + b" HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + ALICE.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
            + framing + b"\r\n\r\n")


BOUNDARY = b"fIlEs"


def form(boundary: bytes, *parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body of (name, content, filename) parts, in order."""
    body = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
                 + b"\r\n\r\n" + content + b"\r\n")
    return body + b"--" + boundary + b"--\r\n"


class FilesAndBatchesTests(GatewayTestCase):
    config = CONFIG.replace("{alice}", ALICE).replace("{bob}", BOB).replace("{carol}", CAROL)

    def setUp(self) -> Any:
        started = super().setUp()

        def clients(_: Any) -> None:
            self.alice = self.caller(ALICE)
            self.bob = self.caller(BOB)

        return started.addCallback(clients)

    def caller(self, key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0,
                               timeout=10)
        self.addCleanup(client.close)
        return client

    def upload(self, client: openai.OpenAI, content: bytes, purpose: str = "batch",
               **kwargs: Any) -> Any:
        return self.sdk(client.files.create, file=("requests.jsonl", content,
                                                   "application/jsonl"),
                        purpose=purpose, **kwargs)

    async def raw(self, method: str, path: str, key: str = ALICE, body: bytes | None = None,
                  content_type: bytes = b"application/json") -> tuple[int, Any]:
        response = await treq.request(method, self.base_url + path, data=body, pool=self.pool,
                                      headers={b"authorization": [b"Bearer " + key.encode()],
                                               b"content-type": [content_type]})
        return response.code, await response.content()

    def watch_upstream(self) -> UploadWatch:
        """The fake upstream reports each body chunk the moment it reads it."""
        self.fake_site.watch = UploadWatch()
        self.fake_site.requestFactory = WatchedRequest
        return self.fake_site.watch

    async def connect(self) -> RawClient:
        client = RawClient()
        port = int(self.base_url.rsplit(":", 1)[1])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        return client

    def requests_counted(self, samples: dict[Any, float], route: str, status: str) -> float:
        return sum(value for (name, labels), value in samples.items()
                   if name == "txgateway_requests_total"
                   and ("route", route) in labels and ("status", status) in labels)

    async def ledger_rows(self) -> list[dict[str, Any]]:
        """The ledger's batch rows, once everything appended is written."""
        ledger = self.service.gateway.ledger
        for _ in range(100):
            if not ledger.pending:
                break
            await deferLater(reactor, 0.05)
        query = "SELECT * FROM usage_ledger WHERE kind = 'batch' ORDER BY request_id"
        url = self.service.gateway.config.store
        if not url.startswith("sqlite:"):
            with psycopg.connect(url, row_factory=dict_row) as database:
                return list(database.execute(query))
        path = url[len("sqlite:"):]
        self.assertTrue(os.path.exists(path))
        with sqlite3.connect(path) as database:
            database.row_factory = sqlite3.Row
            return [dict(row) for row in database.execute(query)]

    async def test_an_upload_rewrites_aliases_and_belongs_to_its_key(self) -> None:
        # More than one 64 KiB slice: lines are rewritten across the slices' edges.
        lines = [line(f"request-{number}", "cheap" if number % 2 else "smart", "x" * 150)
                 for number in range(600)]
        content = jsonl(*lines)
        self.assertGreater(len(content), 2 * 64 * 1024)
        made = await self.upload(self.alice, content)
        self.assertEqual((made.object, made.purpose, made.filename),
                         ("file", "batch", "requests.jsonl"))

        path, headers, fields, filename, sent = self.fake.uploads[-1]
        self.assertEqual((path, fields, filename), (b"/v1/files", {"purpose": "batch"},
                                                   "requests.jsonl"))
        self.assertEqual(headers[b"authorization"], [b"Bearer sk-upstream-secret"])
        upstream_lines = [orjson.loads(one) for one in sent.splitlines()]
        self.assertEqual([one["custom_id"] for one in upstream_lines],
                         [f"request-{number}" for number in range(600)])
        self.assertEqual({one["body"]["model"] for one in upstream_lines[0::2]}, {"gpt-4o"})
        self.assertEqual({one["body"]["model"] for one in upstream_lines[1::2]},
                         {"gpt-4o-mini"})
        self.assertEqual(upstream_lines[0]["body"]["messages"][0]["content"], "x" * 150)
        self.assertEqual(made.bytes, len(sent))

        found = await self.sdk(self.alice.files.retrieve, made.id)
        self.assertEqual(found.id, made.id)
        listed = await self.sdk(self.alice.files.list)
        self.assertEqual([one.id for one in listed.data], [made.id])
        content_read = await self.sdk(self.alice.files.content, made.id)
        self.assertEqual(content_read.read(), sent)

        # Another key sees none of it.
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.files.retrieve, made.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.files.content, made.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.files.delete, made.id)
        self.assertEqual((await self.sdk(self.bob.files.list)).data, [])

        deleted = await self.sdk(self.alice.files.delete, made.id)
        self.assertTrue(deleted.deleted)
        self.assertNotIn(made.id, self.fake.files)
        self.assertEqual((await self.sdk(self.alice.files.list)).data, [])

    async def test_files_of_other_purposes_go_to_the_named_provider(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.upload(self.alice, b"notes", purpose="assistants")
        self.assertEqual(caught.exception.code, "provider_required")
        self.assertIn("azure, fake, spare", caught.exception.message)
        made = await self.upload(self.alice, b"notes", purpose="assistants",
                                 extra_query={"provider": "spare"})
        self.assertEqual(self.fake.uploads[-1][4], b"notes")
        self.assertNotIn(b"authorization", self.fake.uploads[-1][1])  # spare has no key
        listed = await self.sdk(self.alice.files.list, purpose="batch")
        self.assertEqual(listed.data, [])
        listed = await self.sdk(self.alice.files.list, purpose="assistants")
        self.assertEqual([one.id for one in listed.data], [made.id])
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.alice.batches.create, input_file_id=made.id,
                           endpoint="/v1/chat/completions", completion_window="24h")
        self.assertEqual(caught.exception.code, "invalid_input_file")

    async def test_a_batch_runs_and_its_usage_enters_the_ledger_once(self) -> None:
        made = await self.upload(self.alice, jsonl(
            line("a", "cheap"), line("b", "smart"), line("c", "error-400")))
        batch = await self.sdk(self.alice.batches.create, input_file_id=made.id,
                               endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "nightly"})
        self.assertEqual((batch.status, batch.metadata), ("validating", {"run": "nightly"}))
        self.assertEqual(self.fake.batches[batch.id]["input_file_id"], made.id)
        self.assertEqual([one.id for one in (await self.sdk(self.alice.batches.list)).data],
                         [batch.id])
        self.assertEqual((await self.sdk(self.bob.batches.list)).data, [])
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.batches.retrieve, batch.id)

        status, body = await self.raw("GET", f"/v1/batches/{batch.id}/results")
        self.assertEqual(status, 409)
        self.assertEqual(orjson.loads(body)["error"]["message"],
                         "batch results are not ready yet (status: in_progress)")
        status, _ = await self.raw("GET", f"/v1/batches/{batch.id}/results", key=BOB)
        self.assertEqual(status, 404)

        done = await self.sdk(self.alice.batches.retrieve, batch.id)
        self.assertEqual(done.status, "completed")
        self.assertEqual(await self.ledger_rows(), [])  # nothing is entered before a read

        status, results = await self.raw("GET", f"/v1/batches/{batch.id}/results")
        self.assertEqual(status, 200)
        output = [orjson.loads(one) for one in results.splitlines()]
        self.assertEqual([one["custom_id"] for one in output], ["a", "b", "c"])
        # The output file is the caller's now, and reading it again enters nothing more.
        again = await self.sdk(self.alice.files.content, done.output_file_id)
        self.assertEqual(again.read(), results)
        listed = await self.sdk(self.alice.files.list)
        self.assertEqual({one.id for one in listed.data}, {made.id, done.output_file_id})
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.files.content, done.output_file_id)
        status, _ = await self.raw("GET", f"/v1/batches/{batch.id}/results")
        self.assertEqual(status, 200)

        rows = await self.ledger_rows()
        self.assertEqual([row["request_id"] for row in rows],
                         [f"{batch.id}:a", f"{batch.id}:b", f"{batch.id}:c"])
        cheap, smart, failed = rows
        self.assertEqual((cheap["model"], cheap["upstream_model"], cheap["provider"],
                          cheap["key_id"], cheap["route"], cheap["status"]),
                         ("cheap", "gpt-4o-mini", "fake", "cfg_alice", "batches", 200))
        self.assertEqual((cheap["input_tokens"], cheap["output_tokens"]),
                         (BATCH_USAGE["prompt_tokens"], BATCH_USAGE["completion_tokens"]))
        # A dollar a token, at the batch price: half.
        self.assertEqual(cheap["cost_usd"], BATCH_USAGE["total_tokens"] * 0.5)
        self.assertEqual((smart["model"], smart["upstream_model"]), ("smart", "gpt-4o"))
        self.assertEqual((failed["status"], failed["input_tokens"]), (400, 0))
        # Metrics counted them once too, though the output was read three times.
        samples = await self.metrics()
        labels = (("gen_ai_operation_name", "batches"), ("gen_ai_provider_name", "openai"),
                  ("gen_ai_request_model", "cheap"), ("gen_ai_token_type", "input"))
        self.assertEqual(samples[("txgateway_gen_ai_client_token_usage_count", labels)], 1)
        self.assertEqual(samples[("txgateway_gen_ai_client_token_usage_sum", labels)],
                         BATCH_USAGE["prompt_tokens"])

    async def test_a_batch_is_cancelled_upstream(self) -> None:
        made = await self.upload(self.alice, jsonl(line("a", "cheap")))
        batch = await self.sdk(self.alice.batches.create, input_file_id=made.id,
                               endpoint="/v1/chat/completions", completion_window="24h")
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.bob.batches.cancel, batch.id)
        cancelling = await self.sdk(self.alice.batches.cancel, batch.id)
        self.assertEqual(cancelling.status, "cancelling")
        self.assertIn((b"POST", f"/v1/batches/{batch.id}/cancel".encode()),
                      self.fake.object_calls)
        self.assertEqual((await self.sdk(self.alice.batches.retrieve, batch.id)).status,
                         "cancelled")
        status, body = await self.raw("GET", f"/v1/batches/{batch.id}/results")
        self.assertEqual((status, orjson.loads(body)["error"]["code"]),
                         (409, "batch_without_results"))

    async def test_batches_reach_azure_on_its_v1_paths(self) -> None:
        made = await self.upload(self.alice, jsonl(line("a", "on-azure")))
        path, headers, _, _, sent = self.fake.uploads[-1]
        self.assertEqual(path, b"/openai/v1/files")
        self.assertEqual(headers[b"api-key"], [b"azure-secret"])
        self.assertEqual(orjson.loads(sent)["body"]["model"], "my-deployment")
        batch = await self.sdk(self.alice.batches.create, input_file_id=made.id,
                               endpoint="/v1/chat/completions", completion_window="24h")
        self.assertIn((b"POST", b"/openai/v1/batches"), self.fake.object_calls)
        self.assertEqual((await self.sdk(self.alice.batches.retrieve, batch.id)).status,
                         "in_progress")

    async def test_a_spent_budget_refuses_new_batches(self) -> None:
        carol = self.caller(CAROL)
        made = await self.upload(carol, jsonl(line("a", "cheap")))
        batch = await self.sdk(carol.batches.create, input_file_id=made.id,
                               endpoint="/v1/chat/completions", completion_window="24h")
        await self.sdk(carol.batches.retrieve, batch.id)
        await self.sdk(carol.batches.retrieve, batch.id)
        status, _ = await self.raw("GET", f"/v1/batches/{batch.id}/results", key=CAROL)
        self.assertEqual(status, 200)  # 26 tokens at half a dollar: $13 of a $5 budget
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sdk(carol.batches.create, input_file_id=made.id,
                           endpoint="/v1/chat/completions", completion_window="24h")
        self.assertEqual(caught.exception.code, "budget_exceeded")
        self.assertEqual(len(self.fake.batches), 1)

    async def test_bad_uploads_are_refused_naming_the_line(self) -> None:
        cases = [
            (jsonl(line("a", "cheap"), line("b", "nope")), 400, "model_not_found", "line 2"),
            (jsonl(line("a", "cheap"), line("b", "elsewhere")), 400, "mixed_providers",
             "line 2"),
            (jsonl(line("a", "demo")), 400, "unsupported_api", "line 1"),
            (jsonl(line("a", "cheap"), b"{not json"), 400, "invalid_batch_input", "line 2"),
            (jsonl(line("a", "cheap"), line("a", "cheap")), 400, "invalid_batch_input",
             "repeats the custom_id"),
            (b"\n\n", 400, "invalid_batch_input", "no requests"),
        ]
        for content, status, code, fragment in cases:
            with self.assertRaises(openai.APIStatusError) as caught:
                await self.upload(self.alice, content)
            self.assertEqual((caught.exception.status_code, caught.exception.code),
                             (status, code), content)
            self.assertIn(fragment, caught.exception.message)
            self.assertEqual(caught.exception.body["param"], "file")
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.upload(self.alice, jsonl(line("a", "cheap")),
                              extra_query={"provider": "spare"})
        self.assertEqual(caught.exception.code, "mixed_providers")
        self.assertEqual(self.fake.uploads, [])

    async def test_malformed_requests_get_clear_errors(self) -> None:
        boundary = b"b0undary"
        multipart = b"multipart/form-data; boundary=" + boundary
        status, body = await self.raw("POST", "/v1/files", body=form(
            boundary, ("purpose", b"batch", None)), content_type=multipart)
        self.assertEqual((status, orjson.loads(body)["error"]["param"]), (400, "file"))
        status, body = await self.raw("POST", "/v1/files", body=form(
            boundary, ("file", jsonl(line("a", "cheap")), "in.jsonl"),
            ("purpose", b"batch", None)), content_type=multipart)
        self.assertEqual((status, orjson.loads(body)["error"]["param"]), (400, "purpose"))
        status, body = await self.raw("POST", "/v1/files", body=b'{"purpose": "batch"}')
        self.assertEqual((status, orjson.loads(body)["error"]["code"]),
                         (400, "invalid_content_type"))
        status, body = await self.raw("POST", "/v1/files", body=form(
            boundary, ("purpose", b"batch", None))[:-4], content_type=multipart)
        self.assertEqual(status, 400)
        self.assertIn("truncated", orjson.loads(body)["error"]["message"])
        status, _ = await self.raw("POST", "/v1/files", key="sk-wrong", body=b"{}")
        self.assertEqual(status, 401)

        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.alice.files.retrieve, "file-nope")
        with self.assertRaises(openai.NotFoundError) as caught:
            await self.sdk(self.alice.batches.create, input_file_id="file-nope",
                           endpoint="/v1/chat/completions", completion_window="24h")
        self.assertEqual(caught.exception.body["param"], "input_file_id")
        status, body = await self.raw("POST", "/v1/batches", body=b'{"endpoint": "x"}')
        self.assertEqual((status, orjson.loads(body)["error"]["param"]),
                         (400, "input_file_id"))
        status, _ = await self.raw("POST", "/v1/batches", body=b"[1]")
        self.assertEqual(status, 400)
        status, _ = await self.raw("GET", "/v1/batches?limit=500")
        self.assertEqual(status, 400)
        status, _ = await self.raw("GET", "/v1/files?after=file-nope")
        self.assertEqual(status, 404)
        status, _ = await self.raw("GET", "/v1/files/file-x/other")
        self.assertEqual(status, 404)
        self.assertEqual(self.fake.object_calls, [])

    async def test_lists_page_with_after_and_limit(self) -> None:
        made = [await self.upload(self.alice, jsonl(line(f"r{number}", "cheap")))
                for number in range(3)]
        ids = sorted((one.id for one in made), key=lambda one_id: int(one_id[9:]))
        page = await self.sdk(self.alice.files.list, limit=2, order="asc")
        self.assertEqual(([one.id for one in page.data], page.has_more), (ids[:2], True))
        page = await self.sdk(self.alice.files.list, limit=2, order="asc", after=ids[1])
        self.assertEqual(([one.id for one in page.data], page.has_more), (ids[2:], False))
        every = [one.id for one in await self.sdk(
            lambda: list(self.alice.files.list(limit=1, order="asc")))]
        self.assertEqual(every, ids)

    async def test_uploads_reach_upstream_before_they_end(self) -> None:
        """
        The upstream reads the first half of a file while the second is unsent: a plain
        file as the caller wrote it, a batch file rewritten line by line (chunked upstream).
        """
        watch = self.watch_upstream()
        notes = os.urandom(600_000)
        lines = jsonl(*(line(f"r{number}", "cheap" if number % 2 else "smart", "x" * 100)
                        for number in range(3000)))
        self.assertGreater(len(lines), 600_000)
        for query, purpose, content in ((b"?provider=fake", b"assistants", notes),
                                        (b"", b"batch", lines)):
            body = form(BOUNDARY, ("purpose", purpose, None), ("file", content, "in.jsonl"))
            half = body.index(content) + len(content) // 2
            client = await self.connect()
            client.transport.write(upload_head(len(body), query) + body[:half])
            await watch.reached(watch.received + 200_000)
            self.assertEqual(len(self.fake.uploads), purpose == b"batch")
            client.transport.write(body[half:])
            status, _, answer = await client.response()
            self.assertEqual(status, 200, answer)
            _, headers, fields, _, sent = self.fake.uploads[-1]
            self.assertEqual(fields, {"purpose": purpose.decode()})
            self.assertEqual(orjson.loads(answer)["bytes"], len(sent))
        notes_headers = self.fake.uploads[0][1]
        self.assertEqual(self.fake.uploads[0][4], notes)
        self.assertNotIn(b"transfer-encoding", notes_headers)
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])
        upstream = [orjson.loads(one) for one in sent.splitlines()]
        self.assertEqual([one["custom_id"] for one in upstream],
                         [f"r{number}" for number in range(3000)])
        self.assertEqual({one["body"]["model"] for one in upstream[0::2]}, {"gpt-4o"})
        self.assertEqual({one["body"]["model"] for one in upstream[1::2]}, {"gpt-4o-mini"})

    async def test_a_bad_line_mid_upload_aborts_the_upstream_call(self) -> None:
        """A line with an unknown model, past what the upstream has read: 400 naming it, the
        upstream connection dropped before it had the whole form."""
        watch = self.watch_upstream()
        good = [line(f"r{number}", "cheap", "x" * 100) for number in range(2000)]
        content = jsonl(*good, line("bad", "nope"), *good[:100])
        body = form(BOUNDARY, ("purpose", b"batch", None), ("file", content, "in.jsonl"))
        cut = body.index(b'"bad"')
        client = await self.connect()
        client.transport.write(upload_head(len(body)) + body[:cut])
        await watch.reached(150_000)
        client.transport.write(body[cut:])
        status, _, answer = await client.response()
        error = orjson.loads(answer)["error"]
        self.assertEqual((status, error["code"], error["param"]), (400, "model_not_found", "file"))
        self.assertIn("line 2001", error["message"])
        await watch.wait_lost()
        self.assertEqual(self.fake.uploads, [])
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"], record["provider"]),
                         ("files", 400, "fake"))

    async def test_oversized_uploads_are_refused_and_counted_once(self) -> None:
        """By Content-Length before anything, or mid-upload (chunked) with the upstream call
        aborted: 413, counted once each under the files route."""
        watch = self.watch_upstream()
        client = await self.connect()
        client.transport.write(upload_head(2 * 1024 * 1024))
        status, headers, answer = await client.response()
        self.assertEqual((status, orjson.loads(answer)["error"]["code"]),
                         (413, "request_too_large"))

        head = form(BOUNDARY, ("purpose", b"assistants", None), ("file", b"", "a.bin"))
        head = head[:head.index(b"\r\n--" + BOUNDARY + b"--")]
        client = await self.connect()
        client.transport.write(upload_head(None, b"?provider=fake")
                               + chunk(head + bytes(100_000)))
        await watch.reached(100_000)
        for _ in range(3):
            client.transport.write(chunk(bytes(400_000)))
        status, headers, answer = await client.response()
        self.assertEqual((status, headers[b"connection"]), (413, b"close"))
        self.assertEqual(orjson.loads(answer)["error"]["code"], "request_too_large")
        await watch.wait_lost()
        client.transport.write(b"0\r\n\r\n")
        await client.closed
        self.assertEqual(self.fake.uploads, [])

        samples = await self.metrics()
        self.assertEqual(self.requests_counted(samples, "files", "413"), 2)
        self.assertEqual(self.requests_counted(samples, "unknown", "413"), 0)
        self.assertEqual([(record["route"], record["status"])
                          for record in self.access_records()], [("files", 413)] * 2)


class FilesAndBatchesOnPostgreSQL(OnPostgreSQL, FilesAndBatchesTests):
    """The same, with the records and the ledger in PostgreSQL."""

