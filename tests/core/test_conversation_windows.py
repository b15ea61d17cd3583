"""A long conversation is windowed on its judged turn: every window keeps the same context turns."""

from guardcal.core.conversation import Conversation, Turn
from guardcal.core.profiles import load_profile
from guardcal.core.windows import WindowPolicy, split_text


class Words:
    """One token per space-separated word; decode joins them back."""

    def encode(self, text, add_special_tokens=False):
        return text.split(" ")

    def decode(self, ids):
        return " ".join(ids)


def test_the_judged_turn_is_split_and_the_context_is_shown_whole_in_every_window():
    context = Turn("user", " ".join(f"ctx{i}" for i in range(100)))  # longer than a window: never split
    judged = " ".join(f"w{i}" for i in range(40))
    conv = Conversation((context, Turn("assistant", judged)))
    parts = split_text(conv, Words(), WindowPolicy(16, overlap=4))
    assert parts.input_tokens == 40  # counted on the judged turn only
    assert len(parts.texts) == WindowPolicy(16, overlap=4).count(40) > 1
    for window in parts.texts:
        assert isinstance(window, Conversation) and window.context == (context,)
        assert window.judged.role == "assistant" and len(window.text.split(" ")) == 16
    seen = {w for window in parts.texts for w in window.text.split(" ")}
    assert seen == set(judged.split(" "))  # every token of the judged turn is read
    p = load_profile("default")
    prompts = [p.render(w) for w in parts.texts]
    assert all(context.content in prompt for prompt in prompts)


def test_a_conversation_that_fits_is_one_window_unchanged():
    conv = Conversation((Turn("user", "hi"), Turn("assistant", "hello there")))
    assert split_text(conv, Words(), WindowPolicy(16)).texts == (conv,)
