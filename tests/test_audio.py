"""End to end: speech, transcriptions and translations through the gateway, with the SDK."""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from typing import Any

import orjson
import treq

from tests.fake_openai_rest import SPEECH_CHUNKS, TRANSCRIPT
from tests.gateway_harness import CONFIG, GatewayTestCase

LIMIT = 4 * 1024 * 1024


def speech_streamed(client: Any, fake: Any) -> tuple[bytes, bool, str]:
    """Reads a speech answer; says whether its first bytes came before the upstream was done."""
    with client.audio.speech.with_streaming_response.create(
            model="renamed", voice="alloy", input="Say it") as response:
        chunks = response.iter_bytes(1024)
        first = next(chunks)
        early = not fake.speech_finished
        rest = b"".join(chunks)
        return first + rest, early, response.headers["content-type"]


def translate(client: Any, **arguments: Any) -> Any:
    """The SDK marks translations deprecated (OpenAI still serves them): call it quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.audio.translations.create(**arguments)


class AudioTests(GatewayTestCase):
    config = CONFIG.replace("max_body_bytes: 65536", f"max_body_bytes: {LIMIT}")

    async def test_speech_streamed_as_it_arrives(self) -> None:
        """The first audio bytes reach the caller while the upstream is still sending."""
        audio, early, content_type = await self.sdk(speech_streamed, self.client, self.fake)
        self.assertEqual(audio, b"".join(SPEECH_CHUNKS))
        self.assertTrue(early)
        self.assertEqual(content_type, "audio/mpeg")
        path, _, body = self.fake.requests[0]
        self.assertEqual((path, body["model"]), (b"/v1/audio/speech", "upstream-name"))
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"]), ("speech", 200))

    async def test_transcription_big_file_model_rewritten(self) -> None:
        """A multi-MB file arrives intact; only the model field was rewritten."""
        audio = os.urandom(3 * 1024 * 1024) + b"\r\n--not-a-boundary\r\n"
        answer = await self.sdk(self.client.audio.transcriptions.create, model="renamed",
                                file=("speech.wav", audio, "audio/wav"), language="en")
        self.assertEqual(answer.text, TRANSCRIPT)
        self.assertEqual(answer.usage.input_tokens, 120)
        path, fields, files = self.fake.forms[0]
        self.assertEqual(path, b"/v1/audio/transcriptions")
        self.assertEqual(fields, {"model": "upstream-name", "language": "en"})
        self.assertEqual(files["file"], ("speech.wav", "audio/wav",
                                         hashlib.sha256(audio).hexdigest(), len(audio)))
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"], record["output_tokens"]),
                         ("transcriptions", 120, 9))
        self.assertFalse(record["usage_estimated"])

    async def test_whisper_duration_and_text_format(self) -> None:
        """Duration-billed usage is recorded in seconds; a text answer passes as text."""
        answer = await self.sdk(self.client.audio.transcriptions.create, model="whisper-1",
                                file=("a.mp3", b"ID3 fake", "audio/mpeg"))
        self.assertEqual(answer.usage.seconds, 12.5)
        text = await self.sdk(self.client.audio.transcriptions.create, model="whisper-1",
                              file=("a.mp3", b"ID3 fake", "audio/mpeg"), response_format="text")
        self.assertEqual(text.strip(), TRANSCRIPT)
        records = self.access_records()
        self.assertEqual([r["audio_seconds"] for r in records], [12.5, 0.0])
        await self.ledger_written()
        [row] = await self.service.gateway.store.usage_report("model")
        self.assertEqual((row["requests"], row["audio_seconds"]), (2, 12.5))

    async def test_text_transcript_passes_with_its_content_type(self) -> None:
        """A 200 that is not JSON goes back as the upstream wrote it, not made a JSON one."""
        body = (b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
                b'--XyZ\r\nContent-Disposition: form-data; name="response_format"\r\n\r\n'
                b'text\r\n--XyZ\r\nContent-Disposition: form-data; name="file"; '
                b'filename="a.mp3"\r\n\r\nID3 fake\r\n--XyZ--\r\n')
        response = await treq.post(self.base_url + "/v1/audio/transcriptions", body,
                                   pool=self.pool, headers={b"content-type": [
                                       b"multipart/form-data; boundary=XyZ"]})
        self.assertEqual((response.code, await response.content()), (200, TRANSCRIPT.encode()))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=utf-8"])
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"]), ("transcriptions", 200))

    async def test_transcription_stream(self) -> None:
        stream = await self.sdk(self.client.audio.transcriptions.create,
                                model="gpt-4o-transcribe", file=("a.wav", b"RIFF", "audio/wav"),
                                stream=True)
        events = await self.sdk(list, stream)
        self.assertEqual([event.type for event in events][-1], "transcript.text.done")
        self.assertEqual("".join(e.delta for e in events[:-1]).strip(), TRANSCRIPT)
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"], record["stream"]),
                         (120, 9, True))

    async def test_translation(self) -> None:
        answer = await self.sdk(translate, self.client, model="whisper-1",
                                file=("a.mp3", b"ID3 fake", "audio/mpeg"))
        self.assertEqual(answer.text, TRANSCRIPT)
        self.assertEqual(self.fake.forms[0][0], b"/v1/audio/translations")

    async def _post_form(self, body: bytes, content_type: bytes) -> tuple[int, dict]:
        response = await treq.post(self.base_url + "/v1/audio/transcriptions", body,
                                   pool=self.pool, headers={b"content-type": [content_type]})
        return response.code, await response.json()

    async def test_bad_multipart(self) -> None:
        def form(*parts: tuple[str, bytes, str | None]) -> bytes:
            out = b""
            for name, value, filename in parts:
                disposition = f'form-data; name="{name}"'
                if filename:
                    disposition += f'; filename="{filename}"'
                out += b"--XyZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n"
                out += value + b"\r\n"
            return out + b"--XyZ--\r\n"

        multipart = b"multipart/form-data; boundary=XyZ"
        cases = [
            (orjson.dumps({"model": "whisper-1"}), b"application/json", None),
            (form(("file", b"abc", "a.wav")), multipart, "model"),
            (form(("model", b"whisper-1", None)), multipart, "file"),
            (form(("model", b"whisper-1", None), ("file", b"abc", "a.wav"))[:-12], multipart,
             None),
            (form(("model", b"whisper-1", None), ("file", b"abc", "a.wav")),
             b"multipart/form-data; boundary=Other", None),
            (form(("model", b"whisper-1", None), ("file", b"abc", "a.wav")),
             b"text/plain", None),
        ]
        for body, content_type, param in cases:
            status, answer = await self._post_form(body, content_type)
            self.assertEqual(status, 400, (body[:60], content_type))
            self.assertEqual(answer["error"]["param"], param)
            self.assertEqual(answer["error"]["type"], "invalid_request_error")
        self.assertEqual(self.fake.forms, [])

    async def test_oversized_upload(self) -> None:
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
                + b"x" * (LIMIT + 1) + b"\r\n--XyZ--\r\n")
        status, answer = await self._post_form(body, b"multipart/form-data; boundary=XyZ")
        self.assertEqual(status, 413)
        self.assertEqual(answer["error"]["code"], "request_too_large")

    async def test_speech_bad_and_unsupported(self) -> None:
        response = await self.post("/v1/audio/speech", orjson.dumps(
            {"model": "tts-1", "input": "hi"}))
        self.assertEqual(response.code, 400)
        self.assertEqual((await response.json())["error"]["param"], "voice")
        response = await self.post("/v1/audio/speech", orjson.dumps(
            {"model": "demo", "input": "hi", "voice": "alloy"}))
        self.assertEqual(response.code, 400)
        self.assertEqual((await response.json())["error"]["code"], "unsupported_api")

    async def test_speech_upstream_error(self) -> None:
        response = await self.post("/v1/audio/speech", orjson.dumps(
            {"model": "error-400", "input": "hi", "voice": "alloy"}))
        self.assertEqual(response.code, 400)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual((await response.json())["error"]["code"], "fake_400")

    async def test_renamed_small_forms_over_reused_and_closed_connections(self) -> None:
        """
        A small form to a renamed model arrives in one read, so the model part lies in the
        body's last chunk, which waits for its end; the upstream connection, reused from the
        pool, takes the body at once.  Every call is a 200 with the model renamed, the model
        part first or last, over a kept-alive client connection or ``Connection: close``.
        """
        audio = b"RIFF fake audio"
        model = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nrenamed\r\n'
        file = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n")
        forms = [model + file + b"--XyZ--\r\n", file + model + b"--XyZ--\r\n"]
        port = int(self.base_url.rpartition(":")[2])

        def call(form: bytes, close: bool) -> bytes:
            head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gateway\r\n"
                    b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                    b"Content-Length: %d\r\n" % len(form))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(head + (b"Connection: close\r\n" if close else b"") + b"\r\n"
                               + form)
                if close:
                    return b"".join(iter(lambda: client.recv(65536), b""))
                answer = b""
                while b"}" not in answer:  # the whole small JSON answer
                    answer += client.recv(65536)
                return answer

        for round_ in range(4):
            for form in forms:
                answer = await self.sdk(call, form, round_ % 2 == 0)
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])
        self.assertEqual(len(self.fake.forms), 8)
        for path, fields, files in self.fake.forms:
            self.assertEqual((path, fields["model"]), (b"/v1/audio/transcriptions",
                                                       "upstream-name"))
            self.assertEqual(files["file"][3], len(audio))
