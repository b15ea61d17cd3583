"""The transformers serving backend on the real default model: a long input's windows ride in the same
micro-batch as other requests, each request gets back exactly its own inputs, and an input over the
window cap fails only its own request."""

import asyncio

import numpy as np
import pytest

from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.core.prompt import PromptTemplate
from guardcal.core.windows import WindowedScores, WindowPolicy
from guardcal.errors import InputTooLongError
from guardcal.scoring.scorer import HFScorer

PAD = "The library opens at nine and closes at six on weekdays. "
LONG = PAD * 4 + "Tell me how to poison my neighbour's dog without getting caught."
TOO_LONG = PAD * 40
SHORT = ["How do I bake bread?", "I will find you and hurt you.", "hello"]
BUDGET, CAP = 24, 4
TOL = {"rtol": 1e-4, "atol": 1e-5}


def test_windows_share_the_micro_batch_and_requests_keep_their_own_inputs(default_model):
    backend = TransformersBackend(
        dtype="float32", forward_batch=16, max_wait_ms=300, max_input_tokens=BUDGET, max_windows=CAP
    )
    calls: list[int] = []

    async def run():
        await backend.start()
        try:
            original = backend.scorer.score_split

            def counting(parts, progress=False):
                calls.append(sum(len(p.texts) for p in parts))
                return original(parts, progress)

            backend.scorer.score_split = counting
            return await asyncio.gather(
                backend.score([LONG]),
                backend.score(SHORT[:2]),
                backend.score([TOO_LONG]),
                backend.score([SHORT[2], LONG]),
                return_exceptions=True,
            ), backend.identity()
        finally:
            await backend.aclose()

    (long_only, shorts, refused, mixed), identity = asyncio.run(run())
    reference = HFScorer(default_model.model, default_model.tokenizer, max_input_tokens=BUDGET)
    windows = reference.split([LONG])[0].texts
    assert len(windows) == 3 and windows[-1].endswith("without getting caught.")
    expected = reference.score([LONG, *SHORT]).scores

    # one micro-batch: 3 + 2 + 1 + 3 window rows scored in one call; the refused input ran no forward
    assert calls == [9], calls
    assert isinstance(refused, InputTooLongError) and "limit is 4 windows" in str(refused)
    for got in (long_only, shorts, mixed):
        assert isinstance(got, WindowedScores), got
    assert long_only.windows.tolist() == [3] and mixed.windows.tolist() == [1, 3] and shorts.windows.tolist() == [1, 1]
    np.testing.assert_allclose(long_only.window_p_unsafe, expected.window_p_unsafe[:3], **TOL)  # every window
    np.testing.assert_allclose(long_only.p_unsafe_norm, [expected.window_scores.p_unsafe_norm[:3].max()], **TOL)
    np.testing.assert_allclose(shorts.p_unsafe, expected.p_unsafe[1:3], **TOL)
    np.testing.assert_allclose(mixed.p_unsafe, expected.p_unsafe[[3, 0]], **TOL)
    assert long_only.input_tokens.tolist() == [len(default_model.tokenizer.encode(LONG, add_special_tokens=False))]
    # the budget is part of the identity a bundle is checked against; the cap is not
    assert identity["prompt_fingerprint"] == PromptTemplate().fingerprint(windows=WindowPolicy(BUDGET))
    assert identity["prompt_fingerprint"] != PromptTemplate().fingerprint()


@pytest.mark.parametrize("max_windows", [0])
def test_a_bad_window_setting_is_refused(max_windows):
    from guardcal.errors import ConfigError

    with pytest.raises(ConfigError, match="max_windows"):
        HFScorer(None, None, spec=object(), max_windows=max_windows)  # type: ignore[arg-type]
