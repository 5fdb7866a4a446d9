//! Policy documents as `policies/` and the control plane take them: parsing
//! must never panic, and a document that parses compiles for a connection
//! and decides requests without panicking.
#![no_main]

use edgegate::policy::compile::{ArnHead, Context, compile};
use edgegate::policy::document::parse;
use edgegate::policy::eval::{Action, ResourceType};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = parse(text) else {
        return;
    };
    let mut ctx = Context::new();
    ctx.set("iot:ClientId", "lamp-1")
        .set("iot:Connection.Thing.ThingName", "lamp-1")
        .set("iot:Connection.Thing.Attributes[site]", "north")
        .set("iot:Certificate.Subject.CommonName", "lamp-1")
        .set("aws:SourceIp", "192.0.2.7")
        .set_all("iot:ConnectAttributes", vec!["PersistentConnect".into()]);
    let name: Arc<str> = Arc::from("fuzzed");
    let set = compile(
        [(&name, &doc)],
        &ArnHead::new("eu-west-1", "123456789012"),
        &ctx,
    );
    for (action, ty, resource) in [
        (Action::Connect, ResourceType::Client, "lamp-1"),
        (Action::Publish, ResourceType::Topic, "site/north/lamp-1"),
        (Action::Subscribe, ResourceType::TopicFilter, "site/+/#"),
        (
            Action::Receive,
            ResourceType::Topic,
            "$aws/things/lamp-1/shadow/get",
        ),
    ] {
        let _ = set.explain(action, ty, resource);
    }
});
