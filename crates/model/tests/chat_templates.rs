//! Chat templates rendered by minijinja as Jinja2 renders them in llama-cpp-python
//! (`Jinja2ChatFormatter`: trim_blocks, lstrip_blocks, loop controls, Python-style `tojson`);
//! each expected string was produced by that formatter. The templates of the real models
//! are checked in `tokenizer_llamacpp.rs`.

use ingot_model::chat::{default_template, render, ChatTemplate, Message};
use ingot_model::Error;

fn msgs() -> Vec<Message> {
    vec![Message::new("system", "  Be brief!  "), Message::new("user", "Hi there!"), Message::new("assistant", "Hello!")]
}

fn jinja(template: &str) -> String {
    render(template, &msgs(), true, "<s>", "</s>").unwrap()
}

#[test]
fn python_string_methods() {
    let t = "{%- for m in messages %}
  {%- if m.role == 'system' and m.content.strip().startswith('Be') %}
[{{ m.content.strip().upper() }}|{{ m.content.split(' ')|length }}]
  {%- else %}
{{ m.role }}: {{ m.content.replace('!', '?').rstrip('?') }}{% if loop.last %} (last){% endif %}

  {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}assistant:{% endif %}
";
    assert_eq!(jinja(t), "[BE BRIEF!|6]user: Hi thereassistant: Hello (last)assistant:");
}

#[test]
fn trim_and_lstrip_blocks() {
    let t = "{% for m in messages %}
    {% if m.role == 'user' %}
<u>{{ m.content }}</u>
    {% endif %}
{% endfor %}
{{ bos_token }}|{{ eos_token }}
";
    assert_eq!(jinja(t), "<u>Hi there!</u>\n<s>|</s>");
}

#[test]
fn tojson_is_python_json_dumps() {
    let t = r#"{{ {"a": 1, "b": [1.5, "x\n\"é\t", 1e20, 0.0001], "c": none, "d": true, "e": {}} | tojson }}
{{ messages[0] | tojson }}
{{ {"k": [1, {"z": 2}], "e": []} | tojson(indent=2) }}
{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=(",", ":")) }}
{{ "ü" | tojson(ensure_ascii=true) }}|{{ tools | tojson }}"#;
    let want = "{\"a\": 1, \"b\": [1.5, \"x\\n\\\"é\\t\", 1e+20, 0.0001], \"c\": null, \"d\": true, \"e\": {}}\n\
                {\"role\": \"system\", \"content\": \"  Be brief!  \"}\n\
                {\n  \"k\": [\n    1,\n    {\n      \"z\": 2\n    }\n  ],\n  \"e\": []\n}\n\
                {\"a\":2,\"b\":1}\n\"\\u00fc\"|null";
    assert_eq!(jinja(t), want);
}

#[test]
fn loop_controls_and_namespace() {
    let t = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }};{% endfor %}
{%- set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content|length %}{% endfor %}{{ ns.n }}";
    assert_eq!(jinja(t), "Hi there!;28");
}

#[test]
fn raise_exception_is_an_error() {
    let t = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok";
    match render(t, &msgs(), true, "", "") {
        Err(Error::Template(msg)) => assert!(msg.contains("first message must be from the user"), "{msg}"),
        other => panic!("expected a template error, got {other:?}"),
    }
    assert!(matches!(ChatTemplate::new("{% for %}"), Err(Error::Template(_))));
}

#[test]
fn strftime_now_is_available() {
    let year = render("{{ strftime_now('%Y') }}", &[], false, "", "").unwrap();
    assert!(year.len() == 4 && year.starts_with("20"), "{year}");
}

#[test]
fn gemma_builtin_template() {
    let t = default_template("gemma3").unwrap();
    assert_eq!(default_template("llama"), None);
    let m = msgs();
    let want = "<bos><start_of_turn>user\nBe brief!\n\nHi there!<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n";
    assert_eq!(render(t, &m, false, "<bos>", "<eos>").unwrap(), want);
    assert_eq!(render(t, &m, true, "<bos>", "<eos>").unwrap(), format!("{want}<start_of_turn>model\n"));
    // no system message; contents are trimmed
    let m = [Message::new("user", "  Hi  ")];
    assert_eq!(render(t, &m, true, "<bos>", "").unwrap(), "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    assert_eq!(render(t, &[], true, "<bos>", "").unwrap(), "<bos><start_of_turn>model\n");
    // roles must alternate
    let m = [Message::new("user", "a"), Message::new("user", "b")];
    match render(t, &m, true, "<bos>", "") {
        Err(Error::Template(msg)) => assert!(msg.contains("must alternate"), "{msg}"),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn one_template_many_renders() {
    let t = ChatTemplate::new("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}").unwrap();
    assert_eq!(t.render(&msgs()[1..], false, "", "").unwrap(), "<user>Hi there!<assistant>Hello!");
    assert_eq!(t.render(&[], false, "", "").unwrap(), "");
}
