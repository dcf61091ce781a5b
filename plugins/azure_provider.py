"""
The ``azure`` provider: Azure OpenAI, reached at a resource ``endpoint`` with an ``api-key``.

Azure speaks OpenAI's wire format, so calls go through as they came and answers come back
untouched (Azure's ``content_filter_results`` and ``prompt_filter_results`` included); what
differs is where they go.  The route's upstream model is the Azure deployment name.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlencode

import attrs
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.dialects.openai_rest import OPENAI_PATHS as PATHS
from txgateway.providers import (
    ApiCall,
    IPassthroughProvider,
    IRealtimeProvider,
    ProviderContext,
    ProviderPlugin,
    RealtimeTarget,
    UpstreamRequest,
    json_request_headers,
)
from txgateway.providers.openai_realtime import openai_realtime_target, websocket_url

#: Each family's path (`OPENAI_PATHS`) goes under ``/openai/v1`` or
#: ``/openai/deployments/<deployment>``.  APIs with no per-deployment path: v1 it is,
#: whatever ``api`` says.
V1_ONLY = frozenset({"responses", "files", "batches"})


@attrs.frozen
class AzureSettings:
    #: The resource URL, e.g. ``https://myres.openai.azure.com``.
    endpoint: HttpURL
    #: Sent as ``api-key``.
    api_key: str = ""
    #: A Microsoft Entra ID access token (scope ``https://cognitiveservices.azure.com/.default``),
    #: sent as ``Authorization: Bearer`` instead of a key; a reload picks up a renewed one.
    entra_token: str = ""
    #: For the deployments and preview realtime paths (the v1 ones take none); the latest
    #: version both accept.
    api_version: str = "2025-04-01-preview"
    #: Chat at ``/openai/v1/chat/completions`` (model in the body), or at the older
    #: ``/openai/deployments/<deployment>/chat/completions?api-version=...``.
    api: Literal["v1", "deployments"] = "v1"
    #: Realtime at the GA ``/openai/v1/realtime?model=<deployment>``, or at the preview
    #: ``/openai/realtime?api-version=...&deployment=<deployment>`` (the beta interface).
    realtime_api: Literal["ga", "preview"] = "ga"
    #: Extra headers sent with every request and realtime handshake.
    headers: dict[str, str] = attrs.field(factory=dict)


@implementer(IPassthroughProvider, IRealtimeProvider)
class AzureProvider:
    kind = "azure"
    apis = frozenset(PATHS)

    def __init__(self, name: str, settings: AzureSettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._settings = settings
        self._version_query = urlencode({"api-version": settings.api_version})
        self._v1_urls = {api: (settings.endpoint + "/openai/v1" + path).encode()
                         for api, path in PATHS.items()}
        auth = ({"Authorization": "Bearer " + settings.entra_token} if settings.entra_token
                else {"api-key": settings.api_key} if settings.api_key else {})
        self._realtime_headers = {**settings.headers, **auth}
        #: ``/p/<name>/...`` stands for the resource's ``endpoint``/..., with these headers.
        self.passthrough_base = settings.endpoint
        self.passthrough_headers = self._realtime_headers
        self._headers = json_request_headers(self._realtime_headers)
        path = "/openai/v1/realtime" if settings.realtime_api == "ga" else "/openai/realtime"
        self._realtime_url = websocket_url(settings.endpoint) + path

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        url = self._v1_urls[call.api]
        if self._settings.api == "deployments" and call.api not in V1_ONLY:
            url = (f"{self._settings.endpoint}/openai/deployments/{quote(call.model, safe='')}"
                   f"{PATHS[call.api]}?{self._version_query}").encode()
        return UpstreamRequest(b"POST", url, self._headers, call.body)

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """The GA or preview realtime URL, with this provider's key, never the caller's."""
        if self._settings.realtime_api == "ga":
            query = {"model": model} if model else {}
        else:
            query = {"api-version": self._settings.api_version}
            if model:
                query["deployment"] = model
        return openai_realtime_target(self._realtime_url, query, intent, beta,
                                      self._realtime_headers)


azure = ProviderPlugin("azure", AzureSettings, AzureProvider)
