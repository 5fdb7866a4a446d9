//! Table-driven evaluation tests, each row from spec/aws-iot-auth.md §1.

use super::*;
use crate::policy::document::parse;
use crate::policy::eval::{Action, Decision, ResourceType};
use proptest::prelude::*;

const ARN: &str = "arn:aws:iot:us-east-1:123456789012";

fn head() -> ArnHead {
    ArnHead::new("us-east-1", "123456789012")
}

fn set(policies: &[&str], ctx: &Context) -> PolicySet {
    let docs: Vec<(Arc<str>, Document)> = policies
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let text = text.replace("ARN", ARN);
            (
                Arc::from(format!("p{i}")),
                parse(&text).expect("valid policy"),
            )
        })
        .collect();
    compile(docs.iter().map(|(n, d)| (n, d)), &head(), ctx)
}

fn ctx(client: &str) -> Context {
    let mut c = Context::new();
    c.set("iot:ClientId", client);
    c
}

use Action::*;
use Decision::*;
use ResourceType::*;

/// spec §1.1: the minimal example with all three resource families and a Deny.
#[test]
fn the_spec_example_policy() {
    let mut c = ctx("dev-1");
    c.set("iot:Connection.Thing.ThingName", "dev-1");
    let p = set(
        &[r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "ARN:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "ARN:topic/dev/${iot:ClientId}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "ARN:topicfilter/dev/${iot:ClientId}/*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "ARN:topic/dev/${iot:ClientId}/admin"}
        ]}"#],
        &c,
    );
    let rows = [
        (Connect, Client, "dev-1", Allowed),
        (Connect, Client, "dev-2", ImplicitDeny),
        (Publish, Topic, "dev/dev-1/telemetry", Allowed),
        (Publish, Topic, "dev/dev-1/a/b/c", Allowed),
        (Publish, Topic, "dev/dev-1/admin", ExplicitDeny),
        (Receive, Topic, "dev/dev-1/admin", Allowed),
        (Publish, Topic, "dev/dev-2/telemetry", ImplicitDeny),
        (Publish, Topic, "dev/dev-1", ImplicitDeny),
        (Subscribe, TopicFilter, "dev/dev-1/#", Allowed),
        (Subscribe, TopicFilter, "dev/+/x", ImplicitDeny),
        (RetainPublish, Topic, "dev/dev-1/t", ImplicitDeny),
    ];
    for (action, ty, name, want) in rows {
        assert_eq!(p.decide(action, ty, name), want, "{action:?} {name}");
    }
}

/// spec §1.3: NotResource on Receive blocks delivery of restricted topics.
#[test]
fn not_resource_receive() {
    let p = set(
        &[r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Receive", "NotResource": "ARN:topic/a/restricted/*"}
        ]}"#],
        &ctx("c"),
    );
    assert_eq!(p.decide(Receive, Topic, "a/open/x"), Allowed);
    assert_eq!(p.decide(Receive, Topic, "a/restricted/x"), ImplicitDeny);
    assert_eq!(p.decide(Publish, Topic, "a/open/x"), ImplicitDeny);
}

/// spec §1.6: `*` crosses `/`; `+` and `#` are literal; case matters in resources.
#[test]
fn wildcards_and_case() {
    let p = set(
        &[r#"{"Statement": [
            {"Effect": "Allow", "Action": "IOT:PUB*", "Resource": "ARN:topic/s/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": ["ARN:topicfilter/some/+/topic", "ARN:topicfilter/x/*"]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": "ARN:topic/a/#"},
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "ARN:client/dev-???"}
        ]}"#],
        &ctx("c"),
    );
    let rows = [
        (Publish, Topic, "s/a/b/c", Allowed),
        (Publish, Topic, "S/a", ImplicitDeny),
        (Subscribe, TopicFilter, "some/+/topic", Allowed),
        (Subscribe, TopicFilter, "some/x/topic", ImplicitDeny),
        (Subscribe, TopicFilter, "x/#", Allowed),
        (Receive, Topic, "a/b", ImplicitDeny),
        (Receive, Topic, "a/#", Allowed),
        (Connect, Client, "dev-001", Allowed),
        (Connect, Client, "dev-0001", ImplicitDeny),
    ];
    for (action, ty, name, want) in rows {
        assert_eq!(p.decide(action, ty, name), want, "{action:?} {name}");
    }
}

/// spec §1.5: the union of all policies; any matching deny wins.
#[test]
fn union_and_deny_wins() {
    let allow = r#"{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}"#;
    let deny = r#"{"Statement": {"Effect": "Deny", "Action": "iot:Publish", "Resource": "ARN:topic/secret/*"}}"#;
    let p = set(&[allow, deny], &ctx("c"));
    assert_eq!(p.decide(Publish, Topic, "open"), Allowed);
    let (d, st) = p.explain(Publish, Topic, "secret/x");
    assert_eq!(d, ExplicitDeny);
    let st = st.expect("deciding statement");
    assert_eq!((&*st.policy, st.index), ("p1", 0));
    assert_eq!(
        set(&[deny], &ctx("c")).decide(Publish, Topic, "open"),
        ImplicitDeny
    );
    assert_eq!(
        set(&[], &ctx("c")).decide(Connect, Client, "c"),
        ImplicitDeny
    );
}

/// A resource in another region or account never matches; wildcards in the head do.
#[test]
fn arn_heads() {
    let p = set(
        &[r#"{"Statement": [
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:eu-west-1:123456789012:topic/a"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/b"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/c:d"}
        ]}"#],
        &ctx("c"),
    );
    assert_eq!(p.decide(Publish, Topic, "a"), ImplicitDeny);
    assert_eq!(p.decide(Publish, Topic, "b"), Allowed);
    assert_eq!(
        p.decide(Publish, Topic, "c:d"),
        Allowed,
        "topics may contain ':'"
    );
}

/// spec §1.7-§1.8: variables substitute literally; unresolved ones never match, even in a Deny.
#[test]
fn variables() {
    let mut c = ctx("we*rd");
    c.set("iot:Certificate.Subject.CommonName", "sensor-1")
        .set("iot:Connection.Thing.Attributes[site]", "berlin")
        .set("iot:CertificateId", "ab12");
    let p = set(
        &[r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": [
                "ARN:topic/c/${iot:ClientId}",
                "ARN:topic/cn/${iot:Certificate.Subject.CommonName}/*",
                "ARN:topic/site/${iot:Connection.Thing.Attributes[site]}",
                "ARN:topic/esc/${*}/${?}/${$}",
                "ARN:topic/cert/${iot:CertificateId}",
                "ARN:topic/t/${iot:Connection.Thing.ThingName}"
            ]},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "ARN:topic/${iot:Connection.Thing.ThingTypeName}"}
        ]}"#],
        &c,
    );
    let rows = [
        (Topic, "c/we*rd", Allowed),
        (Topic, "c/weird", ImplicitDeny),
        (Topic, "cn/sensor-1/x", Allowed),
        (Topic, "site/berlin", Allowed),
        (Topic, "esc/*/?/$", Allowed),
        (Topic, "esc/a/b/$", ImplicitDeny),
        (Topic, "cert/ab12", Allowed),
        // Unresolved: never matches, neither as an Allow...
        (Topic, "t/${iot:Connection.Thing.ThingName}", ImplicitDeny),
        // ...nor as a Deny.
        (Topic, "${iot:Connection.Thing.ThingTypeName}", ImplicitDeny),
    ];
    for (ty, name, want) in rows {
        assert_eq!(p.decide(Publish, ty, name), want, "{name}");
    }
}

fn cond(block: &str, c: &Context) -> bool {
    let p = set(
        &[&format!(
            r#"{{"Version": "2012-10-17", "Statement": {{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Condition": {block}}}}}"#
        )],
        c,
    );
    p.decide(Connect, Client, "x") == Allowed
}

/// spec §1.9: each operator, present and absent keys, qualifiers.
#[test]
fn conditions() {
    let mut c = ctx("dev-1");
    c.set("aws:SourceIp", "10.1.2.3")
        .set("iot:Connection.Thing.IsAttached", "true")
        .set("iot:Connection.Thing.Attributes[floor]", "3")
        .set("iot:LastWillTopic", format!("{ARN}:topic/lwt/dev-1"))
        .set_all(
            "iot:ConnectAttributes",
            vec!["PersistentConnect".into(), "LastWill".into()],
        )
        .set_all(
            "iot:Certificate.Subject.OrganizationalUnit.List",
            vec!["ops".into(), "lab".into()],
        );
    let rows: &[(&str, bool)] = &[
        (r#"{"StringEquals": {"iot:ClientId": "dev-1"}}"#, true),
        (
            r#"{"StringEquals": {"IOT:CLIENTID": ["x", "dev-1"]}}"#,
            true,
        ),
        (r#"{"StringEquals": {"iot:ClientId": "DEV-1"}}"#, false),
        (
            r#"{"StringEqualsIgnoreCase": {"iot:ClientId": "DEV-1"}}"#,
            true,
        ),
        (r#"{"StringNotEquals": {"iot:ClientId": "dev-1"}}"#, false),
        (
            r#"{"StringNotEqualsIgnoreCase": {"iot:ClientId": "DEV-2"}}"#,
            true,
        ),
        (r#"{"StringLike": {"iot:ClientId": "dev-?"}}"#, true),
        (r#"{"StringNotLike": {"iot:ClientId": "dev-*"}}"#, false),
        (
            r#"{"StringEquals": {"iot:ClientId": "${iot:ClientId}"}}"#,
            true,
        ),
        (
            r#"{"NumericEquals": {"iot:Connection.Thing.Attributes[floor]": 3}}"#,
            true,
        ),
        (
            r#"{"NumericNotEquals": {"iot:Connection.Thing.Attributes[floor]": "3"}}"#,
            false,
        ),
        (
            r#"{"NumericLessThan": {"iot:Connection.Thing.Attributes[floor]": 4}}"#,
            true,
        ),
        (
            r#"{"NumericLessThanEquals": {"iot:Connection.Thing.Attributes[floor]": 2}}"#,
            false,
        ),
        (
            r#"{"NumericGreaterThan": {"iot:Connection.Thing.Attributes[floor]": 2.5}}"#,
            true,
        ),
        (
            r#"{"NumericGreaterThanEquals": {"iot:Connection.Thing.Attributes[floor]": 3}}"#,
            true,
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#,
            true,
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": false}}"#,
            false,
        ),
        (r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, true),
        (
            r#"{"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.1.2.3"]}}"#,
            true,
        ),
        (r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, false),
        (
            r#"{"ArnEquals": {"iot:LastWillTopic": "ARN:topic/lwt/dev-1"}}"#,
            true,
        ),
        (
            r#"{"ArnNotEquals": {"iot:LastWillTopic": "ARN:topic/lwt/dev-1"}}"#,
            false,
        ),
        (
            r#"{"ArnLike": {"iot:LastWillTopic": "ARN:topic/lwt/*"}}"#,
            true,
        ),
        (
            r#"{"ArnNotLike": {"iot:LastWillTopic": "ARN:topic/other/*"}}"#,
            true,
        ),
        (
            r#"{"Null": {"iot:Connection.Thing.ThingTypeName": "true"}}"#,
            true,
        ),
        (r#"{"Null": {"iot:ClientId": "true"}}"#, false),
        (r#"{"Null": {"iot:ClientId": "false"}}"#, true),
        (
            r#"{"ForAllValues:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect", "LastWill"]}}"#,
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}"#,
            false,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:ConnectAttributes": "LastWill"}}"#,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": "admin"}}"#,
            false,
        ),
        (
            r#"{"ForAllValues:StringNotEquals": {"iot:ConnectAttributes": "Other"}}"#,
            true,
        ),
        (
            r#"{"ForAnyValue:StringNotEquals": {"iot:ConnectAttributes": "LastWill"}}"#,
            true,
        ),
        // Several keys AND-ed, several operators AND-ed.
        (
            r#"{"StringEquals": {"iot:ClientId": "dev-1", "aws:SourceIp": "10.1.2.3"}, "Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:ClientId": "dev-1", "aws:SourceIp": "1.1.1.1"}}"#,
            false,
        ),
    ];
    for (block, want) in rows {
        assert_eq!(cond(&block.replace("ARN", ARN), &c), *want, "{block}");
    }
    // Absent keys (spec §1.8).
    let absent: &[(&str, bool)] = &[
        (
            r#"{"StringEquals": {"iot:Connection.Thing.ThingTypeName": "Sensor"}}"#,
            false,
        ),
        (
            r#"{"StringNotEquals": {"iot:Connection.Thing.ThingTypeName": "Sensor"}}"#,
            true,
        ),
        (
            r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "Sensor"}}"#,
            true,
        ),
        (r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, true),
        (
            r#"{"ForAllValues:StringEquals": {"iot:ConnectAttributes": "x"}}"#,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:ConnectAttributes": "x"}}"#,
            false,
        ),
        (
            r#"{"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}"#,
            false,
        ),
    ];
    for (block, want) in absent {
        assert_eq!(cond(block, &Context::new()), *want, "absent: {block}");
    }
}

/// A reference evaluator written straight from the spec's pseudo-code, on whole ARN strings.
fn naive_decide(
    statements: &[(bool, Vec<String>, Vec<String>)],
    action: &str,
    arn: &str,
) -> Decision {
    fn glob(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
            Some(('?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
        }
    }
    let m = |p: &str, s: &str| {
        glob(
            &p.chars().collect::<Vec<_>>(),
            &s.chars().collect::<Vec<_>>(),
        )
    };
    let mut allowed = false;
    for (deny, actions, resources) in statements {
        let a = actions
            .iter()
            .any(|p| m(&p.to_lowercase(), &action.to_lowercase()));
        let r = resources.iter().any(|p| p == "*" || m(p, arn));
        if a && r {
            if *deny {
                return ExplicitDeny;
            }
            allowed = true;
        }
    }
    if allowed { Allowed } else { ImplicitDeny }
}

proptest! {
    #[test]
    fn agrees_with_a_naive_evaluator(
        statements in proptest::collection::vec(
            (
                any::<bool>(),
                proptest::collection::vec("iot:(\\*|Publish|Receive|Pub\\*|P\\?blish)", 1..3),
                proptest::collection::vec("(\\*|topic/[ab/+#*?]{0,6})", 1..3),
            ),
            0..5,
        ),
        action in prop_oneof![Just(Publish), Just(Receive)],
        topic in "[ab/+#]{0,6}",
    ) {
        let doc = Document {
            variables: true,
            statements: statements
                .iter()
                .map(|(deny, actions, resources)| crate::policy::document::Statement {
                    sid: None,
                    effect: if *deny { crate::policy::document::Effect::Deny } else { crate::policy::document::Effect::Allow },
                    actions: actions.clone(),
                    not_action: false,
                    resources: resources
                        .iter()
                        .map(|r| if r == "*" { r.clone() } else { format!("{ARN}:{r}") })
                        .collect(),
                    not_resource: false,
                    conditions: vec![],
                })
                .collect(),
        };
        let name: Arc<str> = "p".into();
        let compiled = compile([(&name, &doc)], &head(), &Context::new());
        let naive_statements: Vec<(bool, Vec<String>, Vec<String>)> = doc
            .statements
            .iter()
            .map(|s| (s.effect == crate::policy::document::Effect::Deny, s.actions.clone(), s.resources.clone()))
            .collect();
        let arn = format!("{ARN}:topic/{topic}");
        prop_assert_eq!(
            compiled.decide(action, Topic, &topic),
            naive_decide(&naive_statements, action.name(), &arn)
        );
    }
}

/// Review findings: unresolved NotResource, literal substitution in Like, ARN fields.
#[test]
fn substitutions_never_widen_a_statement() {
    // An unresolved NotResource skips the statement instead of matching everything.
    let p = set(
        &[r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "NotResource": "ARN:topic/${iot:Connection.Thing.ThingName}/admin"}
        ]}"#],
        &ctx("no-thing"),
    );
    assert_eq!(p.decide(Publish, Topic, "anything"), ImplicitDeny);
    // A client id of `*` is literal text inside StringLike, not a wildcard.
    let mut c = ctx("*");
    c.set("iot:Certificate.Subject.CommonName", "sensor-1");
    assert!(!cond(
        r#"{"StringLike": {"iot:Certificate.Subject.CommonName": "${iot:ClientId}"}}"#,
        &c
    ));
    let mut c = ctx("sensor-1");
    c.set("iot:Certificate.Subject.CommonName", "sensor-1");
    assert!(cond(
        r#"{"StringLike": {"iot:Certificate.Subject.CommonName": "${iot:ClientId}"}}"#,
        &c
    ));
}

#[test]
fn arn_conditions_match_field_by_field() {
    let mut c = ctx("c");
    c.set("iot:LastWillTopic", "x:123456789012:topic/lwt/y");
    assert!(
        !cond(
            r#"{"ArnLike": {"iot:LastWillTopic": "arn:aws:iot:*:123456789012:topic/lwt/*"}}"#,
            &c
        ),
        "`*` does not cross the ':' between ARN fields"
    );
    c.set("iot:LastWillTopic", format!("{ARN}:topic/admin/x"));
    assert!(cond(
        r#"{"ArnEquals": {"iot:LastWillTopic": "arn:aws:iot:*:*:topic/admin/*"}}"#,
        &c
    ));
    assert!(!cond(
        r#"{"ArnNotEquals": {"iot:LastWillTopic": "arn:aws:iot:*:*:topic/admin/*"}}"#,
        &c
    ));
}

/// Keys are numbered up to a bound, process-wide; past it they are kept as
/// text, and a context with both unpacks the same.
#[test]
fn a_context_of_more_keys_than_are_numbered_unpacks_the_same() {
    let mut ctx = Context::new();
    for i in 0..600 {
        ctx.set(
            &format!("iot:connection.thing.attributes[key-{i}]"),
            format!("v{i}"),
        );
    }
    let packed = PackedContext::pack(&ctx).expect("small");
    let back = packed.unpack();
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        ctx.keys().collect::<Vec<_>>()
    );
    for key in ctx.keys() {
        assert_eq!(back.get(key), ctx.get(key));
    }
    // Keys numbered are not kept as text.
    let keys: usize = ctx.keys().map(str::len).sum();
    let values: usize = ctx
        .keys()
        .filter_map(|k| ctx.get(k))
        .flatten()
        .map(String::len)
        .sum();
    assert!(packed.text.len() < keys + values);
}

proptest! {
    /// A packed context gives back every key with all its values, in order,
    /// whatever they hold (empty, multi-byte, several values or none).
    #[test]
    fn a_packed_context_unpacks_to_the_same_context(
        vars in proptest::collection::vec(
            ("[a-z:.]{0,12}", proptest::collection::vec("\\PC{0,8}", 0..4)),
            0..8,
        )
    ) {
        let mut ctx = Context::new();
        for (key, values) in &vars {
            ctx.set_all(key, values.clone());
        }
        let back = PackedContext::pack(&ctx).expect("small").unpack();
        prop_assert_eq!(back.keys().collect::<Vec<_>>(), ctx.keys().collect::<Vec<_>>());
        for key in ctx.keys() {
            prop_assert_eq!(back.get(key), ctx.get(key));
        }
    }
}
