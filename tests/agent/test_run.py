"""The order the agent tries its farm URLs in."""

from vdfarm.agent.login import ServerRef
from vdfarm.agent.run import urls_in_order

URLS = ("http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080")
KNOWN = {f"s{n}": ServerRef(f"s{n}", f"10.0.0.{n}", 10809, 8080) for n in (1, 2, 3)}


def test_the_last_answer_first_and_failed_servers_last():
    assert urls_in_order(URLS, KNOWN, [], None) == list(URLS)
    assert urls_in_order(URLS, KNOWN, [], URLS[1])[0] == URLS[1]
    # s2 answered last but has just failed (hung): its API goes last.
    assert urls_in_order(URLS, KNOWN, ["s2"], URLS[1]) == [URLS[0], URLS[2], URLS[1]]
    assert urls_in_order(URLS, {}, ["s2"], None) == list(URLS)  # unknown: as given
