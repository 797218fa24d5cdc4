"""lungct.errors.UsageError: the user's mistakes are ValueErrors too, so callers that caught ValueError keep working."""

from lungct.errors import UsageError
from search.selection.confirm import NoRecommendation


def test_usage_error_is_a_value_error():
    assert issubclass(UsageError, ValueError)


def test_no_recommendation_is_not_a_usage_error():
    # The confirmation says it in one line and the run goes on; it is not bad input to answer with exit 2.
    assert issubclass(NoRecommendation, ValueError) and not issubclass(NoRecommendation, UsageError)


def test_usage_error_is_one_printable_line():
    assert str(UsageError("--study: bad\x1b[31m name")) == "--study: bad\\x1b[31m name"
