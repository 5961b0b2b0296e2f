"""The explorer's page in a real browser: headless Chromium, driven by Selenium through Debian's chromedriver.

Real processes: a regtest tracker, two miners that mine only when asked
(``--mining on-demand``) and ``zcoin explorer`` on a free loopback port.  The
browser opens the page as a user would and sees every node and the height;
``zcoin generate`` makes a block, and the page shows it without a reload (a
marker set on ``window`` survives: a reload would have dropped it); it follows
a link to that block and on to a transaction, and searches an address the
faucet paid.  A screenshot of each page is saved under the test's temporary
directory and its path printed.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``.ci/run``
installs both); Selenium is pointed at them and never downloads anything
(``SE_OFFLINE``).  Without them the test is skipped, with the reason, unless
``CI`` or ``ZCOIN_REQUIRE_BROWSER`` is set: there it fails, so that CI cannot
pass without having run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.request
from pathlib import Path

import pytest

from framework import FunctionalCluster, MinerNode, sync_blocks, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.processes import cli_in_process, free_port
from support.waiting import TIMEOUT_FACTOR, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000")
PAGE_WAIT_S = 10.0  # how long the page may take to show what the cluster did (scaled by ZCOIN_TIMEOUT_FACTOR)
FAUCET_AMOUNT = 123_456_789
NO_RELOAD_MARK = 42


# --- the browser ---------------------------------------------------------------------------------


def browser_unavailable() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return f"{' and '.join(missing)} missing (Debian packages chromium and chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package is not installed"
    return None


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """A headless Chromium under Selenium with a fresh profile; quit after the test."""
    reason = browser_unavailable()
    if reason is not None:
        if os.environ.get("CI") or os.environ.get("ZCOIN_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test must run here (CI or ZCOIN_REQUIRE_BROWSER is set), but {reason}",
                        pytrace=False)
        print(f"skipping the explorer's browser test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser or driver online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(20 * TIMEOUT_FACTOR)
        yield driver
    finally:
        driver.quit()


def page_wait(driver, condition, what: str, timeout: float = PAGE_WAIT_S):
    """Wait (a deadline, no sleep) until ``condition(driver)`` is truthy; fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout * TIMEOUT_FACTOR, poll_frequency=0.05).until(condition)
    except TimeoutException:
        view = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{view[:3000]}") from None


def click(driver, selector: str) -> None:
    """Click the element matching ``selector`` as a user would; the page may redraw it meanwhile (a live update),
    so a stale element is looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def clicked(d) -> bool:
        try:
            d.find_element("css selector", selector).click()
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return True

    page_wait(driver, clicked, f"a click on {selector}")


def text_of(driver, selector: str) -> str | None:
    """The text of the first element matching ``selector``, or None."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent.trim();",
                                 selector)


def attribute_of(driver, selector: str, name: str) -> str | None:
    """An attribute of the first element matching ``selector``, or None."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);", selector, name)


def shown(selector: str):
    """A wait condition: some element matches ``selector``."""
    return lambda driver: driver.find_elements("css selector", selector)


def javascript_errors(driver) -> list[str]:
    """Uncaught errors the page's scripts logged (failed requests are the network's, not the page's)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") == "javascript"]


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    print(f"explorer screenshot: {path}")
    return path


# --- the cluster and its explorer ----------------------------------------------------------------


def zcoin_json(*args: str):
    """``zcoin ARGS --json``, run in this process; it must succeed."""
    result = cli_in_process(*args, "--json")
    assert result.returncode == 0, f"zcoin {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def start_explorer(net: FunctionalCluster, nodes: list[MinerNode]) -> str:
    """``zcoin explorer`` on a free loopback port for ``nodes``; its base URL once it serves."""
    args = ["explorer", "--bind", f"127.0.0.1:{free_port()}"]
    for node in nodes:
        args += ["--node", node.api]
    proc = net.group.start("explorer", *args)
    url = proc.wait_for_log(r"explorer listening on (http://[\d.]+:\d+)").group(1)
    wait_until(lambda: get(f"{url}/api/blocks/tip/height") is not None, 10, "the explorer to answer")
    return url


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return None


# --- the test ------------------------------------------------------------------------------------


def test_explorer_page_shows_the_cluster_live_and_follows_links_and_search(cluster, browser, tmp_path):
    cluster.add_tracker()
    nodes = cluster.add_miners(("alpha", "bravo"), network_name="regtest", extra=("--mining", "on-demand"))
    alpha, bravo = nodes
    url = start_explorer(cluster, nodes)
    wait_connected(nodes)
    made = zcoin_json("generate", "2", "--node", alpha.api)
    height, _ = sync_blocks(nodes, min_height=made["height"])

    # Every node, its height and the tip height; the stream is live.
    browser.get(f"{url}/")
    for node in nodes:
        page_wait(browser, lambda d, n=node: text_of(d, f'#nodes [data-node="{n.name}"] .height') == str(height),
                  f"{node.name}'s row at height {height}")
    page_wait(browser, lambda d: text_of(d, "#tip-height") == str(height), f"#tip-height {height}")
    page_wait(browser, shown("#live.up"), "the live indicator on")
    assert browser.find_elements("css selector", f'#tree [data-hash="{made["hashes"][-1]}"]'), "tip not in the tree"

    # A new block appears without a reload: the mark set on the window survives.
    browser.execute_script(f"window.__no_reload = {NO_RELOAD_MARK};")
    new = zcoin_json("generate", "1", "--node", bravo.api)
    new_hash, height = new["hashes"][0], new["height"]
    page_wait(browser, lambda d: text_of(d, "#tip-height") == str(height), f"#tip-height {height} after generate")
    new_link = f'#blocks a.block-link[href="#/block/{new_hash}"]'
    page_wait(browser, shown(new_link), "the new block in the latest blocks")
    for node in nodes:
        page_wait(browser, lambda d, n=node: text_of(d, f'#nodes [data-node="{n.name}"] .height') == str(height),
                  f"{node.name}'s row at the new height {height}")
    page_wait(browser, shown(f'#tree [data-hash="{new_hash}"]'), "the new block in the tree")
    assert browser.execute_script("return window.__no_reload") == NO_RELOAD_MARK, "the page reloaded"

    # The faucet pays a fresh address: the mempool card counts it; a block confirms it, and the page follows
    # that block to the payment.
    wallet = str(tmp_path / "app.json")
    assert cli_in_process("wallet", "new", "--wallet", wallet, "--network", "regtest").returncode == 0
    address = zcoin_json("wallet", "address", "--wallet", wallet)["address"]
    paid = zcoin_json("faucet", "--node", alpha.api, "--to", address, "--amount", str(FAUCET_AMOUNT))
    page_wait(browser, lambda d: text_of(d, "#mempool .mempool-count") == "1", "the payment in the mempool card")
    for node in nodes:
        page_wait(browser, lambda d, n=node: text_of(d, f'#nodes [data-node="{n.name}"] .mempool') == "1",
                  f"the payment in {node.name}'s mempool column")
    page_wait(browser, shown(f'#recent-txs a.tx-link[href="#/tx/{paid["txid"]}"]'),
              "the payment among the latest transactions seen")
    overview_png = screenshot(browser, tmp_path, "explorer-overview")
    confirming = zcoin_json("generate", "1", "--node", alpha.api)
    block_hash, height = confirming["hashes"][0], confirming["height"]
    block_link = f'#blocks a.block-link[href="#/block/{block_hash}"]'
    page_wait(browser, shown(block_link), "the confirming block listed")
    click(browser, block_link)
    tx_link = f'#view a.tx-link[href="#/tx/{paid["txid"]}"]'
    page_wait(browser, shown(tx_link), "the payment listed on the block's page")
    assert text_of(browser, "#view #block-hash") == block_hash
    assert len(browser.find_elements("css selector", "#view a.tx-link")) == 2, "a coinbase and the payment"
    screenshot(browser, tmp_path, "explorer-block")
    click(browser, tx_link)
    page_wait(browser, lambda d: text_of(d, "#view #txid") == paid["txid"], "the payment's page")
    page_wait(browser, lambda d: text_of(d, "#tx-status") == "confirmed", "the payment confirmed")
    outputs = text_of(browser, "#tx-outputs")
    assert address in outputs and "1.23456789" in outputs, outputs
    assert browser.find_elements("css selector", f'#view a.block-link[href="#/block/{block_hash}"]')
    screenshot(browser, tmp_path, "explorer-tx")

    # Search the address: its page shows the balance the faucet paid.
    search = browser.find_element("css selector", "form#search-form #search")
    search.clear()
    search.send_keys(address + "\n")
    page_wait(browser, lambda d: text_of(d, "#view #address") == address, "the address page")
    page_wait(browser, lambda d: attribute_of(d, "#view #balance", "data-value") == str(FAUCET_AMOUNT),
              f"a balance of {FAUCET_AMOUNT}")
    assert text_of(browser, "#balance") == "1.23456789"
    assert browser.find_elements("css selector", f'#view a.tx-link[href="#/tx/{paid["txid"]}"]')
    screenshot(browser, tmp_path, "explorer-address")

    # A height in the search box opens that block; back to the overview, still the same page.
    search.clear()
    search.send_keys(f"{height}\n")
    page_wait(browser, lambda d: text_of(d, "#view #block-hash") == block_hash, f"the block at height {height}")
    click(browser, '#view a[href="#/"]')
    page_wait(browser, lambda d: d.find_element("css selector", "#overview").is_displayed(), "the overview again")
    assert browser.execute_script("return window.__no_reload") == NO_RELOAD_MARK, "the page reloaded"
    assert javascript_errors(browser) == []
    assert overview_png.stat().st_size > 10_000
