//! Provisioning templates in AWS's template language (spec
//! aws-iot-device-services.md §3.7), as far as templates for things go:
//! `Parameters` with defaults, `Mappings`, `Resources` of type
//! `AWS::IoT::Thing`, `AWS::IoT::Certificate` and `AWS::IoT::Policy` (an
//! existing policy by name, or a document), and `DeviceConfiguration`, with the intrinsic functions `Ref`,
//! `Fn::Join`, `Fn::Select`, `Fn::Split`, `Fn::FindInMap` and `Fn::Sub`.
//! Pure: a template and parameters in, what to provision out.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The parameter a fleet template reads the new certificate's id from.
pub const CERTIFICATE_ID: &str = "AWS::IoT::Certificate::Id";

/// Longest template body, as AWS allows.
pub const MAX_BODY: usize = 10_240;

/// A checked template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Declared parameters and their defaults.
    parameters: BTreeMap<String, Option<String>>,
    /// Two-level maps for `Fn::FindInMap`.
    mappings: Map<String, Value>,
    /// The resources, by logical name.
    resources: Map<String, Value>,
    /// What the device is told, evaluated.
    device_configuration: Map<String, Value>,
}

/// What a template makes of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The thing to create (or update) and attach the certificate to.
    pub thing: Option<ThingPlan>,
    /// Whether the certificate becomes ACTIVE (else INACTIVE).
    pub active: bool,
    /// Policies to attach to the certificate.
    pub policies: Vec<PolicyPlan>,
    /// `deviceConfiguration` of the reply.
    pub device_configuration: BTreeMap<String, String>,
}

/// A policy a template attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlan {
    /// `PolicyName`, or for a document, the SHA-256 of its text (as AWS
    /// names a policy a template brings without a name).
    pub name: String,
    /// `PolicyDocument`: the policy is made with it if none has the name.
    pub document: Option<String>,
}

/// The thing a template names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingPlan {
    /// `ThingName`.
    pub name: String,
    /// `ThingTypeName`.
    pub thing_type: Option<String>,
    /// `AttributePayload`.
    pub attributes: BTreeMap<String, String>,
    /// What an existing thing's type becomes.
    pub type_override: Override,
    /// What an existing thing's attributes become.
    pub attributes_override: Override,
    /// `ThingGroups`: the static groups it joins.
    pub groups: Vec<String>,
    /// What an existing thing's groups become.
    pub groups_override: Override,
}

/// What a template does to a property of a thing that already exists
/// (`OverrideSettings`). AWS documents no default: the template's value
/// replaces the thing's, as CreateThing's would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Override {
    /// Leave the thing's value.
    DoNothing,
    /// The template's value replaces it.
    #[default]
    Replace,
    /// Refuse the request (`ResourceConflict`).
    Fail,
    /// The template's attributes are added to the thing's.
    Merge,
}

/// The properties each resource type may have, and those AWS has that this
/// gateway does not serve, with why.
const THING_PROPERTIES: [&str; 4] = [
    "ThingName",
    "AttributePayload",
    "ThingTypeName",
    "ThingGroups",
];
const CERTIFICATE_PROPERTIES: [&str; 2] = ["CertificateId", "Status"];
const POLICY_PROPERTIES: [&str; 2] = ["PolicyName", "PolicyDocument"];
const NOT_SERVED: [(&str, &str); 3] = [
    ("BillingGroup", "this gateway has no billing groups"),
    (
        "CertificateSigningRequest",
        "a fleet provisioning template names its certificate by CertificateId",
    ),
    (
        "CertificatePem",
        "a fleet provisioning template names its certificate by CertificateId",
    ),
];

/// Why a template or a request cannot be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template itself is wrong.
    #[error("Invalid provisioning template: {0}")]
    Invalid(String),
    /// A parameter the template needs was not given and has no default.
    #[error("Cannot resolve reference value: {0}")]
    Unresolved(String),
    /// A value of the request does not fit where the template puts it.
    #[error("{0}")]
    BadValue(String),
}

fn invalid(why: impl Into<String>) -> TemplateError {
    TemplateError::Invalid(why.into())
}

/// Functions AWS documents for CloudFormation but not for IoT templates:
/// refused rather than ignored.
const UNSUPPORTED: [&str; 5] = [
    "Fn::If",
    "Fn::Equals",
    "Fn::Base64",
    "Fn::GetAtt",
    "Conditions",
];

impl Template {
    /// Reads and checks a template body.
    pub fn parse(body: &str) -> Result<Self, TemplateError> {
        if body.len() > MAX_BODY {
            return Err(invalid(format!("longer than {MAX_BODY} characters")));
        }
        let doc: Value =
            serde_json::from_str(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(mut doc) = doc else {
            return Err(invalid("not a JSON object"));
        };
        if let Some(word) = UNSUPPORTED
            .iter()
            .find(|w| mentions(&Value::Object(doc.clone()), w))
        {
            return Err(invalid(format!("{word} is not supported")));
        }
        let section = |doc: &mut Map<String, Value>, name: &str| match doc.remove(name) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(invalid(format!("{name} must be an object"))),
        };
        let mut parameters = BTreeMap::new();
        for (name, p) in section(&mut doc, "Parameters")? {
            let default = match &p["Default"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            if !matches!(p["Type"].as_str(), None | Some("String")) {
                return Err(invalid(format!(
                    "parameter {name}: only Type String is supported"
                )));
            }
            parameters.insert(name, default);
        }
        let template = Self {
            parameters,
            mappings: section(&mut doc, "Mappings")?,
            resources: section(&mut doc, "Resources")?,
            device_configuration: section(&mut doc, "DeviceConfiguration")?,
        };
        if let Some(other) = doc
            .keys()
            .find(|k| !matches!(k.as_str(), "AWSTemplateFormatVersion" | "Description"))
        {
            return Err(invalid(format!("unknown section {other}")));
        }
        let (mut certificates, mut things) = (0, 0);
        for (name, r) in &template.resources {
            if let Some(key) = r.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !matches!(k.as_str(), "Type" | "Properties" | "OverrideSettings"))
            }) {
                return Err(invalid(format!("resource {name}: unknown key {key}")));
            }
            let allowed: &[&str] = match r["Type"].as_str() {
                Some("AWS::IoT::Thing") => &THING_PROPERTIES,
                Some("AWS::IoT::Certificate") => &CERTIFICATE_PROPERTIES,
                Some("AWS::IoT::Policy") => &POLICY_PROPERTIES,
                _ => &[],
            };
            if let Some(props) = r["Properties"].as_object()
                && let Some(key) = props.keys().find(|k| !allowed.contains(&k.as_str()))
            {
                let why = NOT_SERVED
                    .iter()
                    .find(|(p, _)| p == key)
                    .map_or("not a property of its type", |(_, why)| why);
                return Err(invalid(format!(
                    "resource {name}: {key} is not supported: {why}"
                )));
            }
            overrides(name, r)?;
            match r["Type"].as_str() {
                Some("AWS::IoT::Thing") => {
                    things += 1;
                    if r["Properties"].get("ThingName").is_none() {
                        return Err(invalid(format!("resource {name}: ThingName is required")));
                    }
                }
                Some("AWS::IoT::Certificate") => certificates += 1,
                Some("AWS::IoT::Policy") => {
                    let props = &r["Properties"];
                    match (props.get("PolicyName"), props.get("PolicyDocument")) {
                        (Some(_), None) => {}
                        (None, Some(d)) => check_document(name, d)?,
                        (None, None) => {
                            return Err(invalid(format!(
                                "resource {name}: Neither policyName nor policyDocument is present in the Template."
                            )));
                        }
                        (Some(_), Some(_)) => {
                            return Err(invalid(format!(
                                "resource {name}: a policy has PolicyName or PolicyDocument, not both"
                            )));
                        }
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "resource {name}: type {} is not supported",
                        other.unwrap_or("(none)")
                    )));
                }
            }
        }
        if certificates != 1 {
            return Err(invalid(
                "exactly one AWS::IoT::Certificate resource is needed",
            ));
        }
        if things > 1 {
            return Err(invalid("at most one AWS::IoT::Thing resource is allowed"));
        }
        Ok(template)
    }

    /// Evaluates the template with the request's parameters (the
    /// certificate id among them, as [`CERTIFICATE_ID`]).
    pub fn evaluate(&self, given: &BTreeMap<String, String>) -> Result<Plan, TemplateError> {
        let mut params = BTreeMap::new();
        for (name, default) in &self.parameters {
            if let Some(v) = given.get(name).or(default.as_ref()) {
                params.insert(name.clone(), v.clone());
            }
        }
        if let Some(id) = given.get(CERTIFICATE_ID) {
            params.insert(CERTIFICATE_ID.to_owned(), id.clone());
        }
        let eval = Eval {
            params: &params,
            mappings: &self.mappings,
        };
        let mut plan = Plan {
            active: true,
            ..Plan::default()
        };
        for (name, r) in &self.resources {
            let props = &r["Properties"];
            match r["Type"].as_str() {
                Some("AWS::IoT::Thing") => {
                    let thing_name = eval.string(&props["ThingName"])?;
                    let thing_type = match &props["ThingTypeName"] {
                        Value::Null => None,
                        v => Some(eval.string(v)?),
                    };
                    let mut attributes = BTreeMap::new();
                    if let Some(a) = props["AttributePayload"].as_object() {
                        for (k, v) in a {
                            attributes.insert(k.clone(), eval.string(v)?);
                        }
                    }
                    let settings = overrides(name, r)?;
                    let groups = match &props["ThingGroups"] {
                        Value::Null => Vec::new(),
                        v => eval.list(v)?,
                    };
                    plan.thing = Some(ThingPlan {
                        name: thing_name,
                        thing_type,
                        attributes,
                        type_override: settings.thing_type,
                        attributes_override: settings.attributes,
                        groups,
                        groups_override: settings.groups,
                    });
                }
                Some("AWS::IoT::Certificate") => {
                    let id = eval.string(&props["CertificateId"])?;
                    if given.get(CERTIFICATE_ID) != Some(&id) {
                        return Err(invalid(format!(
                            "resource {name}: CertificateId must be {{\"Ref\": \"{CERTIFICATE_ID}\"}}"
                        )));
                    }
                    plan.active = match &props["Status"] {
                        Value::Null => true,
                        v => match eval.string(v)?.to_ascii_uppercase().as_str() {
                            "ACTIVE" => true,
                            "INACTIVE" => false,
                            s => {
                                return Err(TemplateError::BadValue(format!(
                                    "certificate status {s}"
                                )));
                            }
                        },
                    };
                }
                _ => plan.policies.push(match props.get("PolicyDocument") {
                    Some(d) => {
                        let text = eval.document(d)?;
                        PolicyPlan {
                            name: crate::registry::identity::hex(
                                ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
                                    .as_ref(),
                            ),
                            document: Some(text),
                        }
                    }
                    None => PolicyPlan {
                        name: eval.string(&props["PolicyName"])?,
                        document: None,
                    },
                }),
            }
        }
        for (k, v) in &self.device_configuration {
            plan.device_configuration.insert(k.clone(), eval.string(v)?);
        }
        Ok(plan)
    }
}

/// What a thing resource's `OverrideSettings` say.
#[derive(Debug, Default)]
struct Overrides {
    thing_type: Override,
    attributes: Override,
    groups: Override,
}

/// A resource's `OverrideSettings`, checked: for a thing, what becomes of
/// an existing thing's type and attributes. AWS's prose names the keys
/// `THING_TYPE_NAME` and `ATTRIBUTE_PAYLOAD`, its examples the property
/// names: both are read. A certificate may say what becomes of its
/// `Status`, which a fleet certificate, always new, has none of yet: the
/// template's applies.
fn overrides(resource: &str, r: &Value) -> Result<Overrides, TemplateError> {
    let mut out = Overrides::default();
    let Some(settings) = r.get("OverrideSettings") else {
        return Ok(out);
    };
    let settings = settings.as_object().ok_or_else(|| {
        invalid(format!(
            "resource {resource}: OverrideSettings is an object"
        ))
    })?;
    let kind = r["Type"].as_str().unwrap_or_default();
    for (key, value) in settings {
        let value = match value.as_str() {
            Some("DO_NOTHING") => Override::DoNothing,
            Some("REPLACE") => Override::Replace,
            Some("FAIL") => Override::Fail,
            Some("MERGE") => Override::Merge,
            _ => {
                return Err(invalid(format!(
                    "resource {resource}: OverrideSettings.{key} is not DO_NOTHING, REPLACE, FAIL or MERGE"
                )));
            }
        };
        let merges = value == Override::Merge;
        match (kind, key.as_str()) {
            ("AWS::IoT::Thing", "ThingTypeName" | "THING_TYPE_NAME") if !merges => {
                out.thing_type = value;
            }
            ("AWS::IoT::Thing", "AttributePayload" | "ATTRIBUTE_PAYLOAD") => out.attributes = value,
            ("AWS::IoT::Thing", "ThingGroups" | "THING_GROUPS") => out.groups = value,
            ("AWS::IoT::Certificate", "Status") if !merges => {}
            _ => {
                return Err(invalid(format!(
                    "resource {resource}: OverrideSettings.{key} = {} is not supported",
                    value_name(value)
                )));
            }
        }
    }
    Ok(out)
}

fn value_name(o: Override) -> &'static str {
    match o {
        Override::DoNothing => "DO_NOTHING",
        Override::Replace => "REPLACE",
        Override::Fail => "FAIL",
        Override::Merge => "MERGE",
    }
}

/// A policy document written out in the template (an object, or JSON in a
/// string, as AWS's examples have both) must be a valid policy; one that
/// functions compute is checked when it is made.
fn check_document(resource: &str, d: &Value) -> Result<(), TemplateError> {
    let text = match d {
        Value::String(s) => s.clone(),
        Value::Object(m) if !is_function(m) => d.to_string(),
        Value::Object(_) => return Ok(()),
        _ => {
            return Err(invalid(format!(
                "resource {resource}: PolicyDocument is an object or a string"
            )));
        }
    };
    crate::policy::document::parse(&text)
        .map(drop)
        .map_err(|errors| {
            let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
            invalid(format!(
                "resource {resource}: PolicyDocument: {}",
                why.join("; ")
            ))
        })
}

/// Whether an object is one intrinsic function (`{"Fn::Join": ...}`).
fn is_function(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.keys().all(|k| k == "Ref" || k.starts_with("Fn::"))
}

/// Whether `word` appears as a key anywhere in `v`.
fn mentions(v: &Value, word: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k == word || mentions(v, word)),
        Value::Array(a) => a.iter().any(|v| mentions(v, word)),
        _ => false,
    }
}

/// Evaluates intrinsic functions over one request's parameters.
struct Eval<'a> {
    params: &'a BTreeMap<String, String>,
    mappings: &'a Map<String, Value>,
}

/// An evaluated value: a string, or a list (from `Fn::Split`, or a literal).
enum Evaluated {
    One(String),
    Many(Vec<String>),
}

impl Eval<'_> {
    /// A policy document's text: written out (policy variables such as
    /// `${iot:Connection.Thing.ThingName}` stay as they are), or computed.
    fn document(&self, d: &Value) -> Result<String, TemplateError> {
        match d {
            Value::Object(m) if !is_function(m) => Ok(d.to_string()),
            _ => self.string(d),
        }
    }

    fn string(&self, v: &Value) -> Result<String, TemplateError> {
        match self.value(v)? {
            Evaluated::One(s) => Ok(s),
            Evaluated::Many(_) => Err(TemplateError::BadValue(
                "a list where a string is needed".into(),
            )),
        }
    }

    fn list(&self, v: &Value) -> Result<Vec<String>, TemplateError> {
        match self.value(v)? {
            Evaluated::Many(l) => Ok(l),
            Evaluated::One(s) => Ok(vec![s]),
        }
    }

    fn value(&self, v: &Value) -> Result<Evaluated, TemplateError> {
        let one = |s: String| Ok(Evaluated::One(s));
        match v {
            Value::String(s) => one(s.clone()),
            Value::Number(n) => one(n.to_string()),
            Value::Bool(b) => one(b.to_string()),
            Value::Array(a) => Ok(Evaluated::Many(
                a.iter().map(|v| self.string(v)).collect::<Result<_, _>>()?,
            )),
            Value::Object(m) if m.len() == 1 => {
                let (f, arg) = m.iter().next().ok_or_else(|| invalid("empty function"))?;
                self.function(f, arg)
            }
            Value::Null => Err(TemplateError::BadValue("a value is missing".into())),
            Value::Object(_) => Err(invalid("an object where a value or one function is needed")),
        }
    }

    fn function(&self, f: &str, arg: &Value) -> Result<Evaluated, TemplateError> {
        let args = |n: usize| {
            arg.as_array()
                .filter(|a| a.len() == n)
                .ok_or_else(|| invalid(format!("{f} takes a list of {n}")))
        };
        match f {
            "Ref" => {
                let name = arg
                    .as_str()
                    .ok_or_else(|| invalid("Ref takes a parameter name"))?;
                self.params
                    .get(name)
                    .cloned()
                    .map(Evaluated::One)
                    .ok_or_else(|| TemplateError::Unresolved(name.to_owned()))
            }
            "Fn::Join" => {
                let a = args(2)?;
                let delimiter = a[0]
                    .as_str()
                    .ok_or_else(|| invalid("Fn::Join: the delimiter is a string"))?;
                Ok(Evaluated::One(self.list(&a[1])?.join(delimiter)))
            }
            "Fn::Split" => {
                let a = args(2)?;
                let delimiter = a[0]
                    .as_str()
                    .ok_or_else(|| invalid("Fn::Split: the delimiter is a string"))?;
                let s = self.string(&a[1])?;
                Ok(Evaluated::Many(
                    s.split(delimiter).map(str::to_owned).collect(),
                ))
            }
            "Fn::Select" => {
                let a = args(2)?;
                let index: usize = self.string(&a[0])?.parse().map_err(|_| {
                    TemplateError::BadValue("Fn::Select: the index is a number".into())
                })?;
                self.list(&a[1])?
                    .into_iter()
                    .nth(index)
                    .map(Evaluated::One)
                    .ok_or_else(|| TemplateError::BadValue(format!("Fn::Select: no item {index}")))
            }
            "Fn::FindInMap" => {
                let a = args(3)?;
                let (map, top, second) = (
                    self.string(&a[0])?,
                    self.string(&a[1])?,
                    self.string(&a[2])?,
                );
                let found = self
                    .mappings
                    .get(&map)
                    .and_then(|m| m.get(&top))
                    .and_then(|m| m.get(&second))
                    .ok_or_else(|| {
                        TemplateError::BadValue(format!("Fn::FindInMap: no {map}.{top}.{second}"))
                    })?;
                Ok(Evaluated::One(match found {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }))
            }
            "Fn::Sub" => {
                let text = arg
                    .as_str()
                    .ok_or_else(|| invalid("Fn::Sub takes a string"))?;
                self.substitute(text).map(Evaluated::One)
            }
            other => Err(invalid(format!("{other} is not supported"))),
        }
    }

    /// `Fn::Sub`: each `${Name}` is the parameter's value, `${!Literal}` is
    /// `${Literal}`, as in CloudFormation.
    fn substitute(&self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| invalid("Fn::Sub: an unclosed ${"))?;
            let name = &after[..end];
            match name.strip_prefix('!') {
                Some(literal) => {
                    out.push_str("${");
                    out.push_str(literal);
                    out.push('}');
                }
                None => out.push_str(
                    self.params
                        .get(name)
                        .ok_or_else(|| TemplateError::Unresolved(name.to_owned()))?,
                ),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet template of AWS's provisioning sample, with a mapping.
    const FLEET: &str = r#"{
      "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "north"},
        "AWS::IoT::Certificate::Id": {"Type": "String"}
      },
      "Mappings": {"Sites": {"north": {"Broker": "edge-n"}, "south": {"Broker": "edge-s"}}},
      "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
          "ThingName": {"Fn::Join": ["", ["lamp-", {"Ref": "SerialNumber"}]]},
          "AttributePayload": {"serial": {"Ref": "SerialNumber"}, "site": {"Ref": "Site"}}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
          "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
      },
      "DeviceConfiguration": {
        "broker": {"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Broker"]},
        "model": {"Fn::Select": [1, {"Fn::Split": ["-", "acme-lamp-2"]}]},
        "greeting": {"Fn::Sub": "hello ${SerialNumber} ${!Literal}"}
      }
    }"#;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_fleet_template_makes_a_thing_its_certificate_and_a_configuration() {
        let t = Template::parse(FLEET).expect("valid");
        let plan = t
            .evaluate(&params(&[
                ("SerialNumber", "0042"),
                (CERTIFICATE_ID, "abc"),
            ]))
            .expect("evaluates");
        assert_eq!(
            plan,
            Plan {
                thing: Some(ThingPlan {
                    name: "lamp-0042".into(),
                    thing_type: None,
                    attributes: [("serial", "0042"), ("site", "north")]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .into(),
                    ..ThingPlan::default()
                }),
                active: true,
                policies: vec![PolicyPlan {
                    name: "device".into(),
                    document: None,
                }],
                device_configuration: [
                    ("broker", "edge-n"),
                    ("greeting", "hello 0042 ${Literal}"),
                    ("model", "lamp"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            }
        );
        // A parameter given overrides its default.
        let plan = t
            .evaluate(&params(&[
                ("SerialNumber", "7"),
                ("Site", "south"),
                (CERTIFICATE_ID, "abc"),
            ]))
            .expect("evaluates");
        assert_eq!(plan.device_configuration["broker"], "edge-s");
    }

    #[test]
    fn what_cannot_be_provisioned_says_why() {
        let t = Template::parse(FLEET).expect("valid");
        assert_eq!(
            t.evaluate(&params(&[(CERTIFICATE_ID, "abc")])),
            Err(TemplateError::Unresolved("SerialNumber".into()))
        );
        let bad = [
            ("{", "not JSON"),
            (r#"{"Resources": {}}"#, "exactly one AWS::IoT::Certificate"),
            (
                r#"{"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Fn::If": []}}}}}"#,
                "Fn::If is not supported",
            ),
            (
                r#"{"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{}"}}}}"#,
                "resource p: PolicyDocument",
            ),
            (
                r#"{"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {}}}}"#,
                "Neither policyName nor policyDocument",
            ),
            (
                r#"{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}"#,
                "AWS::S3::Bucket is not supported",
            ),
            (r#"{"Outputs": {}}"#, "unknown section Outputs"),
        ];
        for (body, why) in bad {
            match Template::parse(body) {
                Err(e) => assert!(e.to_string().contains(why), "{body}: {e}"),
                Ok(_) => panic!("{body} was accepted"),
            }
        }
        let select = r#"{"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}},
            "DeviceConfiguration": {"x": {"Fn::Select": [5, ["a"]]}}}"#;
        let t = Template::parse(select).expect("valid");
        assert!(matches!(
            t.evaluate(&params(&[(CERTIFICATE_ID, "abc")])),
            Err(TemplateError::BadValue(_))
        ));
    }

    #[test]
    fn a_policy_document_is_named_by_its_hash_and_keeps_its_variables() {
        let statement = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": "iot:Publish",
            "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"}]}"#;
        let body = |document: &str| {
            format!(
                r#"{{"Resources": {{
                  "c": {{"Type": "AWS::IoT::Certificate",
                        "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}}}}},
                  "p": {{"Type": "AWS::IoT::Policy", "Properties": {{"PolicyDocument": {document}}}}}}}}}"#
            )
        };
        let escaped = Value::String(statement.into()).to_string();
        for document in [statement.to_owned(), escaped] {
            let t = Template::parse(&body(&document)).expect("valid");
            let plan = t
                .evaluate(&params(&[(CERTIFICATE_ID, "abc")]))
                .expect("evaluates");
            let [p] = &plan.policies[..] else {
                panic!("{plan:?}")
            };
            let text = p.document.as_deref().expect("a document");
            assert!(text.contains("${iot:Connection.Thing.ThingName}"), "{text}");
            assert_eq!(p.name.len(), 64);
            assert_eq!(
                p.name,
                crate::registry::identity::hex(
                    ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()
                )
            );
        }
    }

    #[test]
    fn override_settings_are_read_and_checked() {
        let body = |settings: &str, props: &str| {
            format!(
                r#"{{"Resources": {{
                  "c": {{"Type": "AWS::IoT::Certificate",
                        "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}}}}},
                  "t": {{"Type": "AWS::IoT::Thing",
                        "Properties": {{"ThingName": "lamp", "AttributePayload": {{"a": "1"}} {props}}},
                        "OverrideSettings": {settings}}}}}}}"#
            )
        };
        let plan = |settings: &str| {
            Template::parse(&body(settings, ""))
                .expect("valid")
                .evaluate(&params(&[(CERTIFICATE_ID, "abc")]))
                .expect("evaluates")
                .thing
                .expect("a thing")
        };
        let t = plan(
            r#"{"AttributePayload": "MERGE", "ThingTypeName": "DO_NOTHING", "ThingGroups": "MERGE"}"#,
        );
        assert_eq!(t.groups_override, Override::Merge);
        assert_eq!(
            (t.attributes_override, t.type_override),
            (Override::Merge, Override::DoNothing)
        );
        let t = plan(r#"{"ATTRIBUTE_PAYLOAD": "FAIL"}"#);
        assert_eq!(
            (t.attributes_override, t.type_override),
            (Override::Fail, Override::Replace)
        );
        for (settings, props, why) in [
            (r#"{"ThingTypeName": "MERGE"}"#, "", "ThingTypeName = MERGE"),
            (r#"{"AttributePayload": "SOMETIMES"}"#, "", "not DO_NOTHING"),
            (r#"{"PolicyName": "MERGE"}"#, "", "PolicyName = MERGE"),
            ("{}", r#", "BillingGroup": "g""#, "no billing groups"),
            ("{}", r#", "Colour": "red""#, "Colour is not supported"),
        ] {
            match Template::parse(&body(settings, props)) {
                Err(e) => assert!(e.to_string().contains(why), "{settings} {props}: {e}"),
                Ok(_) => panic!("{settings} {props} was accepted"),
            }
        }
    }
}
