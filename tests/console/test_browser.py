"""The operator's console in Chromium: a real call seen live, its ladder and waterfall, a
hang-up from the page, the route tester, CDR search and trunks."""

from __future__ import annotations

from pathlib import Path

import httpx
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.console.conftest import screenshot
from tests.system.conftest import GW1, HQ, System
from tests.system.sipp import Sipp

LOCAL = "+14255551234"  # hq -> route redmond-local -> pstn-gw1, then pstn-gw2
WAIT_S = 15


def console(system: System, path: str) -> str:
    return f"{system.callstate_api}/console{path}"


def wait(driver: webdriver.Chrome, seconds: float = WAIT_S) -> WebDriverWait[webdriver.Chrome]:
    # a page that redraws itself (live calls, search results) makes elements stale: try again
    return WebDriverWait(
        driver, seconds, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )


def arrows(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """The ladder's arrow labels by leg ("" is the caller's dialog), top to bottom."""
    legs: dict[str, list[str]] = {}
    for arrow in driver.find_elements(By.CSS_SELECTOR, "svg.ladder .arrow"):
        label = arrow.find_element(By.CSS_SELECTOR, ".label").text
        legs.setdefault(arrow.get_attribute("data-leg") or "", []).append(label)
    return legs


def test_a_live_call_its_ladder_and_its_trace(
    system: System, browser: webdriver.Chrome, sipp_dir: Path, tmp_path: Path
) -> None:
    browser.get(console(system, "/calls"))
    assert "No call in progress" in browser.find_element(By.ID, "call-rows").text

    gw1 = Sipp("uas_ring_answer.xml", sipp_dir, ip=GW1, port=system.peer_port(GW1), pause_ms=300)
    gw1.start()
    caller = Sipp(
        "uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL, pause_ms=6000
    )
    caller.start()
    # the row arrives by server-sent events: the page is not reloaded
    row = wait(browser).until(ready.presence_of_element_located((By.CSS_SELECTOR, "tr.call")))
    wait(browser).until(lambda _: "answered" in row.text)
    assert "pbx-hq" in row.text and "pstn-gw1" in row.text
    row.find_element(By.TAG_NAME, "a").click()

    wait(browser).until(ready.presence_of_element_located((By.ID, "ladder")))
    live = arrows(browser)
    assert live[""][:5] == ["INVITE (SDP)", "100 Trying", "180 Ringing", "200 OK (SDP)", "ACK"]
    [leg] = [labels for leg, labels in live.items() if leg]
    assert leg[:4] == ["INVITE (SDP)", "180 Ringing", "200 OK (SDP)", "ACK"]

    assert caller.wait().returncode == 0 and gw1.wait().returncode == 0
    browser.refresh()  # the call has ended: its CDR and every message
    wait(browser).until(ready.presence_of_element_located((By.ID, "attempts")))
    ended = arrows(browser)
    assert ended[""][-2:] == ["BYE", "200 OK"]
    [leg] = [labels for leg, labels in ended.items() if leg]
    assert leg[-2:] == ["BYE", "200 OK"]
    assert "200 OK" in browser.find_element(By.ID, "attempts").text

    invite = browser.find_elements(By.CSS_SELECTOR, "svg.ladder .arrow")[0]
    invite.click()
    shown = wait(browser).until(
        ready.visibility_of_element_located((By.CSS_SELECTOR, ".sip.shown pre"))
    )
    assert shown.text.startswith(f"INVITE sip:{LOCAL}@127.0.0.1:")
    assert "Call-ID:" in shown.text and "m=audio" in shown.text

    spans = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#waterfall .span-label")]
    assert spans[0] == "call" and {"route.decide", "ingress leg", "egress leg"} <= set(spans)
    browser.set_window_size(1440, 1500)  # the whole page, for the README
    screenshot(browser, "call", tmp_path)
    browser.set_window_size(1440, 900)


def test_a_call_hung_up_from_the_console(
    system: System, browser: webdriver.Chrome, sipp_dir: Path, tmp_path: Path
) -> None:
    gw1 = Sipp("uas_answer.xml", sipp_dir, ip=GW1, port=system.peer_port(GW1)).start()
    caller = Sipp("uac_callee_hangs_up.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL)
    caller.start()
    browser.get(console(system, "/calls"))
    row = wait(browser).until(ready.presence_of_element_located((By.CSS_SELECTOR, "tr.call")))
    wait(browser).until(lambda _: "answered" in row.text)
    screenshot(browser, "live-calls", tmp_path)
    call_id = row.get_attribute("data-call")
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(browser).until(ready.alert_is_present()).accept()

    wait(browser).until(ready.url_contains(f"/console/calls/{call_id}"))
    assert caller.wait().returncode == 0 and gw1.wait().returncode == 0  # both got the BYE
    cdr = system.cdr(caller_call_id(caller))
    assert cdr["call_id"] == call_id and cdr["ended_by"] == "api"
    browser.get(console(system, "/calls"))
    wait(browser).until(lambda b: "No call in progress" in b.find_element(By.ID, "call-rows").text)


def caller_call_id(sipp: Sipp) -> str:
    result = sipp.wait()
    invite = result.sent("INVITE")[0]
    return invite.split("Call-ID:")[1].split("\n")[0].strip()


def test_the_route_tester(system: System, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(console(system, "/route-test"))
    Select(browser.find_element(By.ID, "rt-trunk")).select_by_visible_text("pbx-hq")
    browser.find_element(By.ID, "rt-called").send_keys(LOCAL)
    browser.find_element(By.ID, "rt-go").click()
    table = wait(browser).until(ready.presence_of_element_located((By.ID, "targets")))
    rows = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert rows[0].startswith("1 pstn-gw1 edge-pstn 14255551234")
    assert rows[1].startswith("2 pstn-gw2 edge-pstn 14255551234")
    explain = browser.find_element(By.ID, "explain").text
    assert "usage Local: redmond-local" in explain
    screenshot(browser, "route-test", tmp_path)


def test_cdrs_and_trunks_pages(system: System, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(console(system, "/cdrs"))
    Select(browser.find_element(By.NAME, "trunk")).select_by_visible_text("pstn-gw1")
    browser.find_element(By.CSS_SELECTOR, "#cdr-search button").click()
    rows: list[str] = wait(browser).until(  # texts read at once: the table may be redrawn
        lambda b: [r.text for r in b.find_elements(By.CSS_SELECTOR, "#cdrs tbody tr.answered")]
    )
    assert len(rows) >= 2 and all("pstn-gw1" in r for r in rows)
    csv = httpx.get(browser.find_element(By.ID, "csv").get_attribute("href") or "")
    assert csv.text.startswith("call_id,") and csv.text.count("\n") == len(rows) + 1
    screenshot(browser, "cdrs", tmp_path)

    browser.get(console(system, "/trunks"))
    gw1 = browser.find_element(By.CSS_SELECTOR, 'tr[data-trunk="pstn-gw1"]')
    assert "not probed" in gw1.text  # the test trunks are SIPp: no OPTIONS probes
    cells = gw1.find_elements(By.TAG_NAME, "td")
    assert int(cells[6].text) >= 2 and cells[7].text == "100%"
    screenshot(browser, "trunks", tmp_path)
