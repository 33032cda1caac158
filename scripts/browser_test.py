#!/usr/bin/env python3
"""The chat page of `ingot serve` in a real browser: headless Chromium driven by Selenium.

Starts `ingot serve` over SmolLM2 with an API key (on 127.0.0.1, port 0: the port it
prints), opens the page, and checks: the key is asked for and then used (the model's name
appears); Markdown in a stored conversation is rendered and its HTML is not; "New chat"
clears it; at temperature 0 a reply streams (its text is seen at two lengths or more before
it ends); a long reply stopped with the Stop button stops growing, the page is ready again
and the server cancels the request (/metrics: nothing running, no more tokens generated);
the conversation survives a reload (localStorage); a narrow window has no sideways scroll;
no CSP violation or script error in the console. Saves a screenshot (light, wide) to the
path given (default /tmp/ingot-chat.png) and one narrow and dark beside it (-narrow-dark).

Exits 0 when every check passes, 1 with a `browser_test: FAIL:` line otherwise. Skips
(exit 0, with the reason) only when the model file is missing and INGOT_REQUIRE_MODELS is
not 1, or when INGOT_SKIP_BROWSER=1. Chromium and chromedriver come from Debian's
`chromium` and `chromium-driver` packages (.ci/run installs them), Selenium from
scripts/requirements.txt.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STORE = "ingot.chat.v1"


class Failure(Exception):
    pass


def wait_for(what, timeout, check, every=0.05):
    """Polls `check` until it returns something truthy (returned), at most `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise Failure(f"waited {timeout} s for {what}")
        time.sleep(every)


class Server:
    """`ingot serve` on 127.0.0.1 with a free port; its stderr kept; always killed by close()."""

    def __init__(self, ingot, model, key):
        env = dict(os.environ, INGOT_API_KEY=key)
        self.proc = subprocess.Popen(
            [str(ingot), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.key = key
        self.lines = []
        self.base = None
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("listening on "):
                    self.base = line.split()[-1]
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.base is None:
            self.close()
            raise Failure("ingot serve printed no 'listening on' line within 60 s:\n" + self.log())

    def log(self):
        return "\n".join(f"  [serve] {l}" for l in self.lines[-20:])

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def metrics(self):
        out = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, value = line.split(" ", 1)
                out[name] = float(value)
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def find_browser():
    """Chromium and chromedriver, or a Failure that says how to get them."""
    chromium = next((p for p in map(shutil.which, [os.environ.get("CHROMIUM") or "chromium", "chromium-browser"]) if p), None)
    driver = shutil.which(os.environ.get("CHROMEDRIVER") or "chromedriver")
    missing = [n for n, p in [("chromium", chromium), ("chromium-driver (chromedriver)", driver)] if not p]
    if missing:
        raise Failure(
            f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver (.ci/run installs them), "
            "or set INGOT_SKIP_BROWSER=1 to skip this test"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise Failure("Python's selenium is missing: pip install -r scripts/requirements.txt")
    return chromium, driver


def start_browser(chromium, driver_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,820", "--lang=en-US"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is named: Selenium Manager has nothing to download.
    os.environ.setdefault("SE_OFFLINE", "true")
    d = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    d.set_page_load_timeout(20)
    d.set_script_timeout(10)
    return d


# The last reply's text length, and whether a reply is streaming (the Stop button shows).
LAST_REPLY = """
const b = [...document.querySelectorAll('#messages .msg.assistant .body')].pop();
return [b ? b.textContent.length : -1, !document.getElementById('stop').hidden];
"""

HOSTILE = {
    "messages": [
        {"role": "user", "content": "Show me <b>markup</b> & a <script>window.__pwned = 1</script>"},
        {
            "role": "assistant",
            "content": "# Title\n\nSome **bold**, *italic* and `code` with a [link](https://example.com) "
            "and [bad](javascript:window.__pwned=2).\n\n"
            "- one\n- two\n  - nested\n\n"
            "1. first\n2. second\n\n"
            "| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
            "> quoted <img src=x onerror=\"window.__pwned=3\">\n\n"
            '```rust\nfn main() { println!("<hi>"); }\n```\n'
            '<img src=x onerror="window.__pwned=4"><script>window.__pwned=5</script>',
            "note": "3 tokens",
        },
    ],
    "settings": {},
}

MARKDOWN_CHECK = """
const m = document.getElementById('messages');
const q = (s) => m.querySelectorAll(s);
const code = m.querySelector('pre code.language-rust');
return {
  pwned: window.__pwned ?? null,
  scripts: q('script').length, imgs: q('img').length, handlers: q('[onerror]').length,
  userText: q('.msg.user .body')[0]?.textContent ?? null,
  h3: q('.msg.assistant h3').length, strong: q('strong').length, em: q('em').length,
  inlineCode: q('p code').length, lists: q('ul li').length + '/' + q('ul ul li').length + '/' + q('ol li').length,
  table: q('table th').length + '/' + q('table td').length, quote: q('blockquote').length,
  code: code ? code.textContent : null,
  links: [...q('a')].map((a) => a.getAttribute('href')),
};
"""


def run(args, srv, chromium, driver_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    model_id = json.loads(srv.get("/v1/models"))["data"][0]["id"]
    d = start_browser(chromium, driver_path)
    try:
        find = lambda css: d.find_element(By.CSS_SELECTOR, css)
        model_shown = lambda: find("#model").text

        # The page loads without the key; its API calls need it and it asks.
        d.get(srv.base + "/")
        wait_for("the page to say it needs the API key", 10, lambda: model_shown() == "API key needed")
        if not find("#settings").is_displayed():
            raise Failure("the settings did not open for the API key")
        find("#api-key").send_keys(srv.key)
        wait_for(f"the model's name ({model_id}) in the header", 10, lambda: model_shown() == model_id)
        print(f"browser_test: the page asked for the API key, then showed the model {model_id}")

        # Markdown rendered, HTML shown as text; "New chat" clears the conversation.
        d.execute_script(f"localStorage.setItem('{STORE}', arguments[0])", json.dumps(HOSTILE))
        d.refresh()
        wait_for("the model's name after a reload (the key kept for the tab)", 10, lambda: model_shown() == model_id)
        md = d.execute_script(MARKDOWN_CHECK)
        want = {
            "pwned": None, "scripts": 0, "imgs": 0, "handlers": 0,
            "userText": HOSTILE["messages"][0]["content"], "h3": 1, "strong": 1, "em": 1, "inlineCode": 1,
            "lists": "3/1/2", "table": "2/2", "quote": 1, "code": 'fn main() { println!("<hi>"); }',
            "links": ["https://example.com"],
        }
        bad = {k: (md.get(k), v) for k, v in want.items() if md.get(k) != v}
        if bad:
            raise Failure(f"the stored conversation was not rendered as expected (got, wanted): {bad}")
        find("#new-chat").click()
        cleared = f"return !document.querySelector('#messages .msg') && !JSON.parse(localStorage.getItem('{STORE}')).messages.length"
        wait_for("New chat to clear the conversation", 5, lambda: d.execute_script(cleared))
        print("browser_test: Markdown rendered, its HTML shown as text; New chat cleared the conversation")

        # Greedy, a short reply: it must arrive in pieces.
        for sel, value in [("#temperature", "0"), ("#max-tokens", "96")]:
            find(sel).clear()
            find(sel).send_keys(value)
        t0 = time.monotonic()
        find("#prompt").send_keys("Write a Python function that checks whether a number is prime.", Keys.ENTER)
        seen = set()

        def first_reply_done():
            n, busy = d.execute_script(LAST_REPLY)
            if busy and n > 0:
                seen.add(n)
            return not busy and n > 0

        wait_for("the first reply to finish", 60, first_reply_done, every=0.02)
        took = time.monotonic() - t0
        if len(seen) < 2:
            raise Failure(f"the reply did not stream: its text was seen at lengths {sorted(seen)} only while it ran")
        note = find("#messages .msg.assistant:last-child .note").text
        if "tokens" not in note:
            raise Failure(f"the finished reply has no token count: {note!r}")
        print(f"browser_test: a reply streamed in {took:.1f} s, seen at {len(seen)} lengths ({note})")

        # A long reply, stopped: the text stops growing, the page is ready, the server cancels.
        base_tokens = srv.metrics()["ingot_generation_tokens_total"]
        find("#max-tokens").clear()
        find("#max-tokens").send_keys("2000")
        find("#prompt").send_keys("Write a very long story about a dragon who learns to cook, at least 2000 words.")
        find("#send").click()
        seen = set()

        def growing():
            n, busy = d.execute_script(LAST_REPLY)
            if not busy:
                raise Failure(f"the long reply ended by itself before it could be stopped (length {n})")
            if n > 0:
                seen.add(n)
            return len(seen) >= 3 and n >= 80

        wait_for("the long reply to grow", 30, growing, every=0.02)
        find("#stop").click()
        wait_for("the page to be ready after Stop", 5, lambda: d.execute_script(LAST_REPLY)[1] is False)
        if not find("#send").is_enabled() or find("#stop").is_displayed():
            raise Failure("after Stop, Send is not enabled or Stop still shows")
        stopped_at = d.execute_script(LAST_REPLY)[0]
        time.sleep(1.5)
        if (n := d.execute_script(LAST_REPLY)[0]) != stopped_at:
            raise Failure(f"the reply still grew after Stop: {stopped_at} -> {n} characters")
        note = find("#messages .msg.assistant:last-child .note").text
        if note != "stopped":
            raise Failure(f"the stopped reply's note is {note!r}, not 'stopped'")
        idle = lambda: (m := srv.metrics())["ingot_requests_running"] == 0 and m
        m = wait_for("the server to cancel the stopped request (ingot_requests_running 0)", 10, idle)
        time.sleep(1.0)
        m2 = srv.metrics()
        generated = m2["ingot_generation_tokens_total"] - base_tokens
        if m2["ingot_generation_tokens_total"] != m["ingot_generation_tokens_total"] or generated >= 2000:
            raise Failure(f"the server went on generating after Stop: {generated:.0f} tokens of 2000")
        print(f"browser_test: Stop ended the reply at {stopped_at} characters; the server cancelled it after {generated:.0f} tokens")

        # Typing works again, and the conversation survives a reload.
        find("#prompt").send_keys("x")
        if find("#prompt").get_attribute("value") != "x":
            raise Failure("the message box does not take text after Stop")
        find("#prompt").clear()
        texts = d.execute_script("return [...document.querySelectorAll('#messages .msg .body')].map((b) => b.textContent)")
        d.refresh()
        wait_for("the model's name after reloading", 10, lambda: model_shown() == model_id)
        again = d.execute_script("return [...document.querySelectorAll('#messages .msg .body')].map((b) => b.textContent)")
        if len(texts) != 4 or again != texts:
            raise Failure(f"the conversation did not survive a reload: {len(texts)} messages before, {len(again)} after")
        if find("#messages .msg.assistant:last-child .note").text != "stopped":
            raise Failure("the stopped reply's note was lost in the reload")
        print("browser_test: the conversation (4 messages) survived a reload")

        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(args.screenshot)

        # A narrow window in the dark: no sideways scrolling, dark colours.
        d.set_window_size(390, 844)
        d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        wait_for("the settings panel to close on a narrow window", 5, lambda: not find("#settings").is_displayed())
        wide = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        if wide > 0:
            raise Failure(f"a 390 px window scrolls sideways by {wide} px")
        bg = d.execute_script("return getComputedStyle(document.body).backgroundColor")
        rgb = [int(x) for x in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
        if sum(rgb) > 3 * 80:
            raise Failure(f"prefers-color-scheme: dark did not darken the page (background {bg})")
        d.execute_script("const m = document.getElementById('messages'); m.scrollTop = m.scrollHeight")
        narrow = str(Path(args.screenshot).with_name(Path(args.screenshot).stem + "-narrow-dark.png"))
        d.save_screenshot(narrow)
        print(f"browser_test: a 390 px dark window fits; screenshots {args.screenshot} and {narrow}")

        # The console: nothing but the expected 401 of the first /v1/models.
        errors = [
            e["message"] for e in d.get_log("browser")
            if e["level"] == "SEVERE" and not ("/v1/models" in e["message"] and "401" in e["message"])
        ]
        if errors:
            raise Failure("errors in the browser console:\n  " + "\n  ".join(errors))
    except Exception:
        try:
            d.save_screenshot(str(Path(args.screenshot).with_name(Path(args.screenshot).stem + "-failed.png")))
        except Exception:
            pass
        raise
    finally:
        d.quit()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("screenshot", nargs="?", default="/tmp/ingot-chat.png", help="where to save the screenshot")
    ap.add_argument("--ingot", default=str(ROOT / "target/release/ingot"), help="the ingot binary")
    models = Path(os.environ.get("INGOT_MODELS") or Path.home() / ".cache/ingot/models")
    ap.add_argument("--model", default=str(models / MODEL_FILE), help="the model file")
    args = ap.parse_args()

    if os.environ.get("INGOT_SKIP_BROWSER") == "1":
        print("browser_test: SKIP: INGOT_SKIP_BROWSER=1")
        return 0
    if not Path(args.model).is_file():
        if os.environ.get("INGOT_REQUIRE_MODELS") == "1":
            print(f"browser_test: FAIL: {args.model} missing and INGOT_REQUIRE_MODELS=1")
            return 1
        print(f"browser_test: SKIP: {args.model} not found (run scripts/fetch_models.sh); this test checks nothing")
        return 0
    t0 = time.monotonic()
    srv = None
    try:
        if not os.access(args.ingot, os.X_OK):
            raise Failure(f"{args.ingot} is not an executable: cargo build --release -p ingot-cli")
        chromium, driver = find_browser()
        srv = Server(args.ingot, args.model, secrets.token_urlsafe(12))
        run(args, srv, chromium, driver)
    except Failure as e:
        print(f"browser_test: FAIL: {e}")
        if srv:
            print("the server's last lines:\n" + srv.log())
        return 1
    except Exception as e:
        # Selenium's own errors (the driver failed to start, an element went missing).
        print(f"browser_test: FAIL: {type(e).__name__}: {e}")
        if srv:
            print("the server's last lines:\n" + srv.log())
        return 1
    finally:
        if srv:
            srv.close()
    print(f"browser_test: all checks passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
