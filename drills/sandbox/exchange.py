"""What the sandbox gateway takes and gives: the chat request it understands, an
OpenAI-style error answer, and everything decided about one served request (the
HTTP layer only plays it out). How those decisions are made is ``gateway.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    """The part of OpenAI's chat-completions body the sandbox understands."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stream: bool = False
    response_format: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None
    # The caller (OpenAI's end-user field; LiteLLM's ``end_user``): per-customer
    # limits and metrics go by it.
    user: str | None = Field(default=None, min_length=1, max_length=128)

    @property
    def wants_json(self) -> bool:
        fmt = (self.response_format or {}).get("type")
        return fmt in ("json_object", "json_schema")


class GatewayError(Exception):
    """An OpenAI-style error answer: status, message, type, code, offending param."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class Served:
    """Everything decided about one successful request; the HTTP layer only plays it out."""

    id: str
    created: int
    requested_route: str
    route: str
    model: str
    prompt_version: str
    fallback_route: str | None
    customer: str | None
    input_tokens: int
    output_tokens: int
    content: str
    finish_reason: str
    ttft_s: float
    per_token_s: float
    cost: float
    quality: float
    thrashing: bool = False
    flags: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.ttft_s + self.output_tokens * self.per_token_s

    def headers(self) -> dict[str, str]:
        h = {
            "x-llm-sandbox-route": self.route,
            "x-llm-sandbox-model": self.model,
            "x-llm-sandbox-prompt-version": self.prompt_version,
        }
        if self.fallback_route:
            h["x-llm-sandbox-fallback"] = self.fallback_route
        return h
