"""The web console (``/ui``) in a real headless Chromium against a real daemon on echo.

An operator's session: open the page, enter the admin key, see a refused launch's error line (a bad extra
package added with the plus button), launch echo with 2 replicas and an environment variable from the form and
watch the progress reach READY, chat and read the streamed answer, scale, follow a replica's log while it
grows, look at the venv and GPU views, terminate. Plus: a page without the key can do nothing, the CSP is
set, the page fits a phone's width, and the browser's console shows no error but the expected refusal. And the
try area on a tiny embedding model and a tiny cross-encoder built in the test, driven by keyboard alone, its
ranked list and embedding checked against the same requests over HTTP, at desktop and phone width.

Screenshots of the main views go to ``$XINFD_TEST_SCREENSHOTS`` (default ``build/console-screenshots``, which
git ignores). Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/system-packages`` installs them) and
the ``selenium`` package; skipped with the reason where they are missing.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Daemon, wait_for
from tests.integration.test_gpu_inventory_daemon import TWO_GPUS

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402  # after the importorskip
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
    ),
]

ADMIN = "sk-console-admin"
SHOTS = Path(os.environ.get("XINFD_TEST_SCREENSHOTS", REPO / "build" / "console-screenshots"))
# Without the background-networking flags Chromium keeps calling home, which a closed network punishes.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,800")


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    # Two GPUs declared by hand (no driver here), so the GPU view has placements to show.
    d: Daemon = make_daemon(env={"XINFD_ADMIN_API_KEYS": ADMIN, "XINFD_GPUS": TWO_GPUS}).start()
    return d


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Wait for ``check`` to answer something true; on a timeout, say what and show the page's text."""
    try:
        return wait_for(check, timeout=timeout, interval=0.1)
    except AssertionError:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"timed out waiting for {what}; the page says:\n{body}") from None


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def shot(driver: WebDriver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


def console_errors(driver: WebDriver) -> list[str]:
    return [str(e["message"]) for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def sign_in(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def view(driver: WebDriver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-view="{name}"]').click()


def fresh(action: Callable[[], Any]) -> Any:
    """Run ``action`` again when the models list was redrawn under it (the page polls every 2 s)."""
    for _ in range(20):
        try:
            return action()
        except StaleElementReferenceException:
            time.sleep(0.1)
    return action()


def replica_states(driver: WebDriver, uid: str) -> list[str]:
    return list(driver.execute_script(
        "return [...document.querySelectorAll(`article[data-uid='${arguments[0]}'] table.replicas tbody tr`)]"
        ".map((tr) => tr.cells[1].textContent)", uid))


def card_of(driver: WebDriver, uid: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'article[data-uid="{uid}"]')


def test_operator_session_launch_chat_scale_log_terminate(daemon: Daemon, browser: WebDriver) -> None:
    driver = browser
    driver.get(daemon.endpoint + "/ui")
    assert driver.current_url.endswith("/ui/")
    sign_in(driver, ADMIN)
    until(driver, lambda: driver.find_element(By.ID, "console").is_displayed(), what="the console")
    assert "xinfd" in text(driver, "daemon-line")
    assert driver.execute_script("return sessionStorage.getItem('xinfd-admin-key')") == ADMIN
    shot(driver, "01-models-empty")

    # The launch form: families and engines from the API; the venv switch starts at the daemon's setting.
    view(driver, "launch")
    Select(driver.find_element(By.ID, "launch-family")).select_by_value("echo")
    engine = Select(driver.find_element(By.ID, "launch-engine"))
    assert engine.first_selected_option.get_attribute("value") == "echo"
    assert "echo: available" in text(driver, "engine-reasons")
    venv_switch = driver.find_element(By.ID, "launch-venv")
    assert not venv_switch.is_selected()  # the test daemon runs with XINFERENCE_ENABLE_VIRTUAL_ENV=0
    assert "default: off" in text(driver, "launch-venv-default")
    replicas = driver.find_element(By.ID, "launch-replicas")
    replicas.clear()
    replicas.send_keys("2")
    driver.find_element(By.ID, "launch-uid").send_keys("echo-ui")
    n_gpu = driver.find_element(By.ID, "launch-ngpu")
    n_gpu.clear()
    n_gpu.send_keys("1")

    # A refused launch: an installer option as an extra package, added with the plus button.
    driver.find_element(By.ID, "package-add").click()
    driver.find_element(By.CSS_SELECTOR, "#package-list .package").send_keys("--index-url=http://evil.example")
    assert not console_errors(driver)  # nothing went wrong so far
    driver.find_element(By.ID, "launch-submit").click()
    status = until(driver, lambda: "refused" in (t := text(driver, "launch-status")) and t, what="the refusal")
    assert "400 invalid_venv_spec" in status and "installer option" in status, status
    assert "error" in driver.find_element(By.ID, "launch-status").get_attribute("class")
    shot(driver, "02-launch-refused")
    refusals = console_errors(driver)
    assert len(refusals) == 1 and "/control/v1/models" in refusals[0] and "400" in refusals[0], refusals
    assert daemon.xinfctl_json("list") == []  # refused before anything started

    # Remove the bad package (the minus button), add an environment variable, launch for real.
    driver.find_element(By.CSS_SELECTOR, "#package-list .remove-row").click()
    assert not driver.find_elements(By.CSS_SELECTOR, "#package-list li")
    driver.find_element(By.ID, "env-add").click()
    driver.find_element(By.CSS_SELECTOR, "#env-list .env-name").send_keys("CONSOLE_MARK")
    driver.find_element(By.CSS_SELECTOR, "#env-list .env-value").send_keys("from the form")
    driver.find_element(By.ID, "option-add").click()  # echo's delay between tokens, to watch the stream
    driver.find_element(By.CSS_SELECTOR, "#option-list .option-name").send_keys("delay")
    driver.find_element(By.CSS_SELECTOR, "#option-list .option-value").send_keys("0.15")
    driver.find_element(By.ID, "launch-submit").click()
    until(driver, lambda: "READY" in text(driver, "launch-status"), timeout=90, what="READY")
    progress = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#launch-progress li")]
    assert any("launching" in p for p in progress), progress
    assert sum("replica_ready" in p for p in progress) == 2, progress
    assert progress[-1].split(" ", 1)[1].startswith("ready:"), progress
    shot(driver, "03-launch-progress-ready")
    (listed,) = daemon.xinfctl_json("list")
    assert listed["model_uid"] == "echo-ui" and listed["env"] == ["CONSOLE_MARK"] and len(listed["replicas"]) == 2
    assert listed["options"] == {"delay": 0.15}

    # The models view: both replicas READY with their pids.
    view(driver, "models")
    until(driver, lambda: replica_states(driver, "echo-ui") == ["READY", "READY"], what="two READY replicas")
    pids = {r["pid"] for r in listed["replicas"]}
    assert fresh(lambda: {int(td.text) for td in card_of(driver, "echo-ui").find_elements(
        By.CSS_SELECTOR, "tbody tr td:nth-child(3)")}) == pids
    assert "echo · echo" in fresh(lambda: card_of(driver, "echo-ui").text)
    assert sorted(fresh(lambda: [td.text for td in card_of(driver, "echo-ui").find_elements(
        By.CSS_SELECTOR, "tbody tr td:nth-child(4)")])) == ["0", "1"]
    shot(driver, "04-models-two-replicas")

    # Chat: the answer streams into the page. Try focuses the message; Ctrl+Enter sends it (the venv test
    # below uses the Send button).
    fresh(lambda: card_of(driver, "echo-ui").find_element(By.XPATH, ".//button[text()='Try']").click())
    assert Select(driver.find_element(By.ID, "chat-model")).first_selected_option.text == "echo-ui"
    assert driver.switch_to.active_element.get_attribute("id") == "chat-input"
    answer = "hello from the console, one word at a time"
    driver.switch_to.active_element.send_keys(answer)
    driver.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
    # Part of the answer is on the page before the stream ends: it is shown as it comes, not at the end.
    partial = until(driver, lambda: (t := text(driver, "chat-output")) and t != answer and t, what="a partial answer")
    assert answer.startswith(partial) and driver.find_element(By.ID, "chat-output").get_attribute("data-done") is None
    until(driver, lambda: driver.find_element(By.ID, "chat-output").get_attribute("data-done") == "1",
          what="the streamed answer")
    assert text(driver, "chat-output") == answer
    shot(driver, "05-chat")

    # Scale to one replica.
    view(driver, "models")

    def scale_to_one() -> None:
        scale = card_of(driver, "echo-ui").find_element(By.CSS_SELECTOR, ".scale-input")
        scale.clear()
        scale.send_keys("1")
        card_of(driver, "echo-ui").find_element(By.CSS_SELECTOR, ".scale-button").click()

    fresh(scale_to_one)
    until(driver, lambda: replica_states(driver, "echo-ui") == ["READY"], what="one replica after scaling")
    assert len(daemon.xinfctl_json("list")[0]["replicas"]) == 1

    # The replica's log, following live: a request served after the view opened shows up in it.
    fresh(lambda: card_of(driver, "echo-ui").find_element(By.CSS_SELECTOR, ".logs-button").click())
    until(driver, lambda: "following echo-ui replica 0" in text(driver, "logs-status"), what="the log stream")
    until(driver, lambda: "serving echo-ui" in text(driver, "logs-output"), what="the log's start")
    before = text(driver, "logs-output").count("finish=")
    _chat_over_http(daemon, "echo-ui", "a line for the log")
    until(driver, lambda: text(driver, "logs-output").count("finish=") > before, what="the new log line")
    shot(driver, "06-log-following")
    driver.find_element(By.ID, "logs-stop").click()
    assert text(driver, "logs-status") == "stopped"

    # Venvs and GPUs views, from the same API.
    view(driver, "venvs")
    until(driver, lambda: "No venvs." in text(driver, "venvs-table") or
          driver.find_elements(By.CSS_SELECTOR, "#venvs-table tbody tr[data-path]"), what="the venv list")
    driver.find_element(By.ID, "venvs-gc").click()
    until(driver, lambda: "gc removed" in text(driver, "venvs-result"), what="gc's answer")
    shot(driver, "07-venvs")
    view(driver, "gpus")
    until(driver, lambda: "strategy" in text(driver, "gpus-summary"), what="the GPU view")
    gpus = json.loads(_get(daemon, "/control/v1/gpus"))
    assert gpus["inventory"]["summary"] in text(driver, "gpus-summary")
    for gpu in gpus["gpus"]:  # each device with what sits on it and why
        shown = driver.find_element(By.CSS_SELECTOR, f'article[data-gpu="{gpu["index"]}"]').text
        assert gpu["name"] in shown
        for replica in gpu["replicas"]:
            assert replica["label"] in shown and replica["reason"] in shown, (replica, shown)
    assert sum(len(g["replicas"]) for g in gpus["gpus"]) == 1  # scaled down to one replica
    shot(driver, "08-gpus")

    # Terminate: the first press arms, the second stops the model.
    view(driver, "models")

    def terminate() -> None:
        button = card_of(driver, "echo-ui").find_element(By.CSS_SELECTOR, ".terminate-button")
        button.click()
        assert button.text == "Confirm terminate"
        assert daemon.xinfctl_json("list") != []
        button.click()

    fresh(terminate)
    until(driver, lambda: not driver.find_elements(By.CSS_SELECTOR, 'article[data-uid="echo-ui"]'),
          what="the model gone")
    assert daemon.xinfctl_json("list") == []
    assert driver.find_element(By.ID, "models-empty").is_displayed()

    # A phone's width: nothing wider than the screen.
    driver.set_window_size(390, 844)
    view(driver, "launch")
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
    shot(driver, "09-launch-phone")
    assert console_errors(driver) == []  # nothing since the one expected refusal


def test_without_the_key_the_page_can_do_nothing(daemon: Daemon, browser: WebDriver) -> None:
    driver = browser
    driver.get(daemon.endpoint + "/ui/")
    until(driver, lambda: driver.find_element(By.ID, "key-input").is_displayed(), what="the sign-in form")
    assert not driver.find_element(By.ID, "console").is_displayed()
    # The page's own API calls without a key are refused, reads and changes alike.
    statuses = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        Promise.all([fetch('/control/v1/models'), fetch('/control/v1/status'),
                     fetch('/control/v1/models', {method: 'POST', body: '{"model_name": "echo"}'}),
                     fetch('/control/v1/venvs/gc', {method: 'POST'})])
          .then((rs) => done(rs.map((r) => r.status)), (e) => done(String(e)));""")
    assert statuses == [401, 401, 401, 401]
    # A wrong key (typed and sent with Enter, no mouse): the console stays closed, the error says why, and the
    # key is not kept.
    driver.find_element(By.ID, "key-input").send_keys("sk-wrong" + Keys.ENTER)
    message = until(driver, lambda: text(driver, "key-error"), what="the key error")
    assert "401" in message and "invalid_api_key" in message, message
    assert not driver.find_element(By.ID, "console").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('xinfd-admin-key')") is None
    assert daemon.xinfctl_json("list") == []
    errors = console_errors(driver)
    assert errors and all("401" in e for e in errors), errors  # the refusals only, no script error


def test_csp_and_security_headers_and_ui_off(daemon: Daemon, make_daemon: Any) -> None:
    with urllib.request.urlopen(daemon.endpoint + "/ui/", timeout=10) as resp:
        headers = resp.headers
        page = resp.read().decode()
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and "<script type=\"module\"" in page
    off = make_daemon("off", env={"XINFD_UI": "0", "XINFD_ADMIN_API_KEYS": ADMIN}).start()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(off.endpoint + "/ui/", timeout=10)
    assert refused.value.code == 404
    refused.value.close()


def _get(daemon: Daemon, path: str) -> str:
    request = urllib.request.Request(daemon.endpoint + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode())


def _chat_over_http(daemon: Daemon, uid: str, content: str) -> None:
    body = json.dumps({"model": uid, "messages": [{"role": "user", "content": content}]}).encode()
    request = urllib.request.Request(daemon.endpoint + "/v1/chat/completions", data=body, headers={
        "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as resp:
        assert json.loads(resp.read())["choices"][0]["message"]["content"] == content


def test_venv_launch_with_an_extra_package_and_the_venv_refusals(make_daemon: Any, browser: WebDriver,
                                                                  tmp_path: Path) -> None:
    """The venv switch on (the daemon's default here), an extra package that replaces the model's pin, the uv
    steps in the progress, what the replica imports, and the daemon's refusal to remove a venv in use."""
    from tests.unit.venvs.wheels import standard_index

    daemon = make_daemon("venvs", {"XINFD_ADMIN_API_KEYS": ADMIN, "XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
                                   "XINFD_PLUGINS": "tests.integration.venv_plugin",
                                   "XINFD_TEST_VENV_INDEX": standard_index(tmp_path / "index")}).start()
    driver = browser
    driver.get(daemon.endpoint + "/ui/")
    sign_in(driver, ADMIN)
    until(driver, lambda: driver.find_element(By.ID, "console").is_displayed(), what="the console")
    view(driver, "launch")
    Select(driver.find_element(By.ID, "launch-family")).select_by_value("pinned-b")  # pins xinfdtestpkg==2.0
    assert driver.find_element(By.ID, "launch-venv").is_selected()
    assert "default: on" in text(driver, "launch-venv-default")
    driver.find_element(By.ID, "package-add").click()
    driver.find_element(By.CSS_SELECTOR, "#package-list .package").send_keys("xinfdtestpkg==1.0")
    driver.find_element(By.ID, "launch-submit").click()
    until(driver, lambda: "READY" in text(driver, "launch-status"), timeout=180, what="READY")
    progress = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#launch-progress li")]
    assert any(" venv: " in p and "installed 1 package(s)" in p for p in progress), progress
    shot(driver, "10-launch-venv-progress")

    # The replica imports the version the form asked for, not the model's pin.
    view(driver, "try")
    driver.find_element(By.ID, "chat-input").send_keys("versions?")
    driver.find_element(By.ID, "chat-send").click()
    until(driver, lambda: driver.find_element(By.ID, "chat-output").get_attribute("data-done") == "1",
          what="the answer")
    imported = json.loads(text(driver, "chat-output"))
    assert imported["xinfdtestpkg"][0] == "1.0", imported

    # Removing the venv the model runs in is refused, and the page says so; gc keeps it too.
    view(driver, "venvs")
    row = until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#venvs-table tbody tr[data-path]"),
                what="the venv row")[0]
    assert row.get_attribute("data-path") == imported["sys.prefix"]
    assert "pinned-b" in row.text and "pkgver" in row.text
    row.find_element(By.XPATH, ".//button[text()='Remove']").click()
    refusal = until(driver, lambda: "refused" in (t := text(driver, "venvs-result")) and t, what="the refusal")
    assert "409" in refusal and "in use" in refusal, refusal
    shot(driver, "11-venvs-refused")
    assert Path(imported["sys.prefix"]).is_dir()

    # Once the model is gone, gc removes it.
    daemon.xinfctl("terminate", "pinned-b")
    driver.find_element(By.ID, "venvs-gc").click()
    until(driver, lambda: "gc removed 1" in text(driver, "venvs-result"), what="gc's answer")
    assert not Path(imported["sys.prefix"]).exists()
    until(driver, lambda: "No venvs." in text(driver, "venvs-table"), what="the emptied list")
    errors = console_errors(driver)
    assert len(errors) == 1 and "409" in errors[0], errors  # the refusal only


# ---- the try area on embedding and rerank models ------------------------------------------------------------

TRY_QUERY = "quick brown fox"
# One unbroken long "word" among them: on a phone it must wrap inside the ranked list, not widen the page.
TRY_DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
                 "a small model for tests answers with random words",
                 "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
EMBED_DIMENSION = 48  # not the cross-encoder's 32, so the number shown is the embedding model's own


def build_tiny_sentence_encoder(path: Path, tokenizer_from: Path, *, hidden: int = EMBED_DIMENSION) -> Path:
    """Write a random tiny BERT with mean pooling as a sentence-transformers folder (``modules.json``), with the
    WordPiece tokenizer of the folder at ``tokenizer_from``; ``SentenceTransformer`` loads it like a hub model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:  # sentence-transformers 6 moved the modules (the old path warns)
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models  # type: ignore[no-redef]

    bert = path.with_name(path.name + "-bert")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.save_pretrained(bert)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=0)
              ).save_pretrained(bert)
    word = models.Transformer(str(bert), max_seq_length=128)
    SentenceTransformer(modules=[word, models.Pooling(hidden, "mean")]).save(str(path))
    return path


def _launch_family(daemon: Daemon, tmp_path: Path, name: str, ability: str, engine: str, folder: Path) -> None:
    """Register ``folder`` as a custom family (``extra.model_path``) and launch it under its own name."""
    spec = {"name": name, "abilities": [ability], "engines": [engine], "context_length": 128,
            "extra": {"model_path": str(folder)}}
    spec_file = tmp_path / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    daemon.xinfctl("register", "--file", str(spec_file))
    daemon.xinfctl("launch", "-n", name, "-e", engine, "-u", name, timeout=300)


def _post(daemon: Daemon, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(daemon.endpoint + path, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def ranked_rows(driver: WebDriver) -> list[dict[str, str]]:
    """The rerank answer as the page shows it: one row per ``li``, in the page's order."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#rerank-output li')].map((li) => ({index: li.dataset.index, "
        "score: li.querySelector('.score').textContent, document: li.querySelector('.document').textContent}))"))


def focused_id(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.activeElement.id"))


def test_try_embedding_and_rerank_models(daemon: Daemon, browser: WebDriver, tmp_path: Path) -> None:
    """The try area on a tiny cross-encoder and a tiny sentence encoder built here: rerank by keyboard only
    (Try focuses the query, Tab through the form, Enter on the button, Enter in the query, Ctrl+Enter in the
    documents), each ranked list equal to ``/v1/rerank``'s answer for the same input, the embedding's dimension
    and first values equal to ``/v1/embeddings``'s, a form without a model refused by the page itself, and the
    same view at a phone's width."""
    pytest.importorskip("sentence_transformers")
    from tests.unit.engines.tiny_models import build_tiny_cross_encoder

    cross_encoder = build_tiny_cross_encoder(tmp_path / "tiny-ce")
    encoder = build_tiny_sentence_encoder(tmp_path / "tiny-st", tokenizer_from=cross_encoder)
    _launch_family(daemon, tmp_path, "tiny-ce", "rerank", "sentence_transformers_rerank", cross_encoder)
    _launch_family(daemon, tmp_path, "tiny-st", "embed", "sentence_transformers", encoder)

    driver = browser
    driver.get(daemon.endpoint + "/ui/")
    sign_in(driver, ADMIN)
    until(driver, lambda: driver.find_element(By.ID, "console").is_displayed(), what="the console")
    until(driver, lambda: replica_states(driver, "tiny-ce") == ["READY"] and
          replica_states(driver, "tiny-st") == ["READY"], what="both models READY")

    # The rerank model's Try button opens the try area with it picked, and the query field focused.
    fresh(lambda: card_of(driver, "tiny-ce").find_element(By.XPATH, ".//button[text()='Try']").click())
    assert driver.find_element(By.ID, "view-try").is_displayed()
    assert focused_id(driver) == "rerank-query"
    rerank_model = Select(driver.find_element(By.ID, "rerank-model"))
    assert [o.text for o in rerank_model.options] == ["tiny-ce"]  # only models that rerank are offered
    assert rerank_model.first_selected_option.text == "tiny-ce"
    assert [o.text for o in Select(driver.find_element(By.ID, "embed-model")).options] == ["tiny-st"]

    # No chat model runs: the chat form says so and does not send (the select is required and empty).
    chat_model = Select(driver.find_element(By.ID, "chat-model"))
    assert [(o.get_attribute("value"), o.text) for o in chat_model.options] == [("", "no chat model is running")]
    driver.find_element(By.ID, "chat-input").send_keys("anyone there?")
    driver.find_element(By.ID, "chat-send").click()
    assert driver.execute_script("return document.getElementById('chat-model').validity.valueMissing")
    assert text(driver, "chat-output") == ""

    # Keyboard only: Shift+Tab from the query is the model, Tab the documents, where Enter is a new line (one
    # document per line, nothing sent), Tab the button, and Enter there sends.
    query = driver.find_element(By.ID, "rerank-query")
    query.send_keys(Keys.SHIFT, Keys.TAB)
    assert focused_id(driver) == "rerank-model"
    driver.switch_to.active_element.send_keys(Keys.TAB)
    assert focused_id(driver) == "rerank-query"
    driver.switch_to.active_element.send_keys(TRY_QUERY, Keys.TAB)
    assert focused_id(driver) == "rerank-documents"
    driver.switch_to.active_element.send_keys(*[part for d in TRY_DOCUMENTS for part in (d, Keys.ENTER)])
    assert driver.find_element(By.ID, "rerank-documents").get_attribute("value") == "\n".join(TRY_DOCUMENTS) + "\n"
    assert ranked_rows(driver) == [] and text(driver, "rerank-status") == ""  # Enter there did not send
    driver.switch_to.active_element.send_keys(Keys.TAB)
    assert focused_id(driver) == "rerank-send"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    shown = ranking_shown(driver, daemon, TRY_QUERY, TRY_DOCUMENTS)
    driver.execute_script("document.getElementById('rerank-output').scrollIntoView({block: 'end'})")
    shot(driver, "12-try-rerank")

    # Enter in the query field sends the form too (implicit submission): a new query, a new ranking.
    query.send_keys(Keys.CONTROL, "a")
    query.send_keys("hello, how are you", Keys.ENTER)
    assert ranking_shown(driver, daemon, "hello, how are you", TRY_DOCUMENTS) != shown
    # Ctrl+Enter in the documents sends, where a plain Enter is a new line: one more document, one more row.
    documents = driver.find_element(By.ID, "rerank-documents")
    documents.send_keys(Keys.CONTROL, Keys.END)
    documents.send_keys("how are you")
    documents.send_keys(Keys.CONTROL, Keys.ENTER)
    assert len(ranking_shown(driver, daemon, "hello, how are you", [*TRY_DOCUMENTS, "how are you"])) == 5

    # Embeddings: the model picked, Tab to the text, Enter; the page shows the model's dimension and first values.
    Select(driver.find_element(By.ID, "embed-model")).select_by_visible_text("tiny-st")
    driver.find_element(By.ID, "embed-model").send_keys(Keys.TAB)
    assert focused_id(driver) == "embed-input"
    driver.switch_to.active_element.send_keys("the quick brown fox", Keys.ENTER)
    output = until(driver, lambda: "dimensions" in (t := text(driver, "embed-output")) and t, timeout=60,
                   what="the embedding")
    vector = _post(daemon, "/v1/embeddings", {"model": "tiny-st", "input": "the quick brown fox"})
    vector = vector["data"][0]["embedding"]
    assert len(vector) == EMBED_DIMENSION
    assert output.startswith(f"{EMBED_DIMENSION} dimensions: [") and output.endswith(", …]"), output
    values = [float(v) for v in output.split("[", 1)[1].rstrip("]").split(", ")[:-1]]
    assert len(values) == 8
    assert all(abs(v - x) <= 0.5e-4 + 1e-9 for v, x in zip(values, vector[:8], strict=True)), (values, vector[:8])
    driver.execute_script("document.getElementById('embed-form').scrollIntoView()")
    shot(driver, "13-try-embedding")

    # A phone's width: the try area fits (the long document wraps in the list), the forms in one column.
    driver.set_window_size(390, 844)
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
    form = driver.find_element(By.ID, "rerank-form").rect
    for element_id in ("rerank-model", "rerank-query", "rerank-documents", "rerank-send", "rerank-output"):
        box = driver.find_element(By.ID, element_id).rect
        assert form["x"] - 1 <= box["x"] and box["x"] + box["width"] <= form["x"] + form["width"] + 1, element_id
    driver.execute_script("document.getElementById('rerank-output').scrollIntoView({block: 'end'})")
    shot(driver, "14-try-phone")
    assert console_errors(driver) == []


def ranking_shown(driver: WebDriver, daemon: Daemon, query: str, documents: list[str]) -> list[dict[str, str]]:
    """Wait for the page's ranked list and check it against ``/v1/rerank``'s answer for the same input: the
    order, the documents, and the scores to the decimals shown (one precision for the list, at least four, and
    enough that different scores look different). Sending clears the list at once, so no old list is read."""
    until(driver, lambda: "best first" in text(driver, "rerank-status"), timeout=60, what="the ranked documents")
    assert text(driver, "rerank-status") == f"{len(documents)} document{'s' if len(documents) > 1 else ''}, best first"
    shown = ranked_rows(driver)
    answer = _post(daemon, "/v1/rerank", {"model": "tiny-ce", "query": query, "documents": documents,
                                          "return_documents": True})["results"]
    assert [int(r["index"]) for r in shown] == [r["index"] for r in answer], (shown, answer)  # best first
    assert [r["document"] for r in shown] == [documents[r["index"]] for r in answer]
    scores = [r["relevance_score"] for r in answer]
    assert scores == sorted(scores, reverse=True)
    (digits,) = {len(r["score"].split(".")[1]) for r in shown}
    assert digits >= 4
    pairs = list(zip(shown, scores, strict=True))
    for row, score in pairs:
        assert abs(float(row["score"]) - score) <= 0.5 * 10**-digits + 1e-12, (row, score)
    for (row, score), (next_row, next_score) in itertools.pairwise(pairs):
        assert (row["score"] == next_row["score"]) == (score == next_score), (shown, scores)
    return shown
