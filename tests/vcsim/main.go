// Command vcsim-balloon: a vCenter simulator for telegraf-balloon's tests and benchmarks.
//
// It wraps the govmomi 0.24.2 simulator library (Debian's golang-github-vmware-govmomi-dev,
// which ships no vcsim program) and changes what the tests need to behave like a real vCenter:
//
//   - PropertyCollector.RetrievePropertiesEx pages when -page N > 0: at most min(N, maxObjects)
//     objects per reply plus a token; ContinueRetrievePropertiesEx(token) returns the next page,
//     a token works once and only in the session that got it, the last page has no token, and
//     CancelRetrievePropertiesEx drops the rest. Without a session it faults NotAuthenticated
//     (the stock simulator answers with a missingSet instead).
//   - PerformanceManager.QueryPerf for VirtualMachine entities returns samples built from the
//     VM itself: mem.vmmemctl = summary.quickStats.balloonedMemory MB * 1024 (KB), and so on,
//     and any counter group.name.rollup can be forced per VM with the extraConfig key
//     sim.perf.<group>.<name>.<rollup> (an integer in the counter's unit). Samples are aligned to
//     the interval (20 s realtime); zero values are sent, not dropped.
//   - QueryPerf refuses a query asking for more entity x counter pairs than the OptionManager
//     setting config.vpxd.stats.maxQueryMetrics (-max-query-metrics, read on every call so a
//     test may change it with UpdateOptions) with RestrictedByAdministrator, as vCenter does.
//   - Only -username/-password, and each -user name:password, log in; others get InvalidLogin.
//   - POST /sim/perf/refuse {"users": ["monitor"], "after": 0} makes every QueryPerf of those
//     users' sessions ("*": everyone's) fault NoPermission, as vCenter answers a user whose role
//     lacks the privilege, once they have had `after` more successful ones; {"users": []} ends it.
//     A VM's extraConfig key sim.perf_lag_s (seconds) puts its newest realtime sample that far
//     in the past (a host that stopped reporting), and sim.perf_omit = 1 leaves it out of
//     QueryPerf replies altogether.
//   - GET /sim/calls returns JSON counts of SOAP calls by method (and QueryPerf's entities and
//     metric ids, RetrievePropertiesEx's objects and pages); GET /sim/reset zeroes them.
//     GET /sim/sessions lists the live sessions; POST /sim/sessions/terminate ends them all.
//     POST /sim/update sets any property of any object (host memory, for example).
//   - SessionManager.currentSession reads as unset without a session (Fetch), as on vCenter.
//   - -delay-ms and -method-delay add latency to SOAP calls; -session-idle-timeout expires
//     idle sessions.
//
// It prints one JSON line on stdout once listening, then serves until SIGTERM or SIGINT.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const maxQueryMetricsKey = "config.vpxd.stats.maxQueryMetrics"

// ---------------------------------------------------------------------------------------------
// call statistics (/sim/calls)
// ---------------------------------------------------------------------------------------------

type callStats struct {
	mu               sync.Mutex
	calls            map[string]int64
	faults           map[string]int64
	perfEntities     int64
	perfMetricIDs    int64
	perfMaxMetricIDs int64
	perfRefused      int64
	perfDenied       int64
	retrieveObjects  int64
	retrievePages    int64
	since            time.Time
}

var stats = &callStats{calls: map[string]int64{}, faults: map[string]int64{}, since: time.Now()}

func (s *callStats) call(method string, fault bool) {
	s.mu.Lock()
	s.calls[method]++
	if fault {
		s.faults[method]++
	}
	s.mu.Unlock()
}

func (s *callStats) perf(entities, metricIDs int, refused bool) {
	s.mu.Lock()
	s.perfEntities += int64(entities)
	s.perfMetricIDs += int64(metricIDs)
	if int64(metricIDs) > s.perfMaxMetricIDs {
		s.perfMaxMetricIDs = int64(metricIDs)
	}
	if refused {
		s.perfRefused++
	}
	s.mu.Unlock()
}

func (s *callStats) denied() {
	s.mu.Lock()
	s.perfDenied++
	s.mu.Unlock()
}

func (s *callStats) page(objects int) {
	s.mu.Lock()
	s.retrieveObjects += int64(objects)
	s.retrievePages++
	s.mu.Unlock()
}

func (s *callStats) reset() {
	s.mu.Lock()
	s.calls = map[string]int64{}
	s.faults = map[string]int64{}
	s.perfEntities, s.perfMetricIDs, s.perfMaxMetricIDs, s.perfRefused = 0, 0, 0, 0
	s.perfDenied = 0
	s.retrieveObjects, s.retrievePages = 0, 0
	s.since = time.Now()
	s.mu.Unlock()
}

func (s *callStats) snapshot() map[string]interface{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	calls := make(map[string]int64, len(s.calls))
	var total int64
	for k, v := range s.calls {
		calls[k] = v
		total += v
	}
	faults := make(map[string]int64, len(s.faults))
	for k, v := range s.faults {
		faults[k] = v
	}
	return map[string]interface{}{
		"calls":  calls,
		"faults": faults,
		"total":  total,
		"query_perf": map[string]int64{
			"entities":       s.perfEntities,
			"metric_ids":     s.perfMetricIDs,
			"max_metric_ids": s.perfMaxMetricIDs,
			"refused":        s.perfRefused,
			"denied":         s.perfDenied,
			"calls":          s.calls["QueryPerf"],
		},
		"retrieve": map[string]int64{
			"objects": s.retrieveObjects,
			"pages":   s.retrievePages,
		},
		"since": s.since.UTC().Format(time.RFC3339Nano),
	}
}

// soapMethod extracts the name of the first element inside the SOAP Body.
func soapMethod(body []byte) string {
	i := bytes.Index(body, []byte("Body"))
	for i >= 0 {
		// the tag must be an element start: preceded by '<' or ':'
		if i > 0 && (body[i-1] == '<' || body[i-1] == ':') {
			break
		}
		j := bytes.Index(body[i+4:], []byte("Body"))
		if j < 0 {
			return ""
		}
		i += 4 + j
	}
	if i < 0 {
		return ""
	}
	rest := body[i:]
	gt := bytes.IndexByte(rest, '>')
	if gt < 0 {
		return ""
	}
	rest = rest[gt+1:]
	lt := bytes.IndexByte(rest, '<')
	if lt < 0 {
		return ""
	}
	rest = rest[lt+1:]
	end := bytes.IndexAny(rest, " \t\r\n/>")
	if end < 0 {
		return ""
	}
	name := string(rest[:end])
	if c := strings.IndexByte(name, ':'); c >= 0 {
		name = name[c+1:]
	}
	return name
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// countingHandler counts SOAP calls by method name, then hands the request to the simulator.
func countingHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/sim/calls":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(stats.snapshot())
			return
		case "/sim/reset":
			stats.reset()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(stats.snapshot())
			return
		case "/sim/update":
			if r.Method != http.MethodPost {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			status, reply := simUpdate(r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(reply)
			return
		case "/sim/perf/refuse":
			if r.Method != http.MethodPost {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			status, reply := setRefusal(r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(reply)
			return
		case "/sim/sessions":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]interface{}{"sessions": sessionList()})
			return
		case "/sim/sessions/terminate":
			if r.Method != http.MethodPost {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			keys := terminateAll()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]interface{}{"terminated": keys})
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := ioutil.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		method := soapMethod(body)
		if method == "" {
			method = "(unparsed)"
		}
		if method == "Login" {
			body = checkLogin(body)
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		stats.call(method, rec.status >= 500)
	})
}

// ---------------------------------------------------------------------------------------------
// /sim/update: set properties of any managed object (hosts have no ReconfigVM SET. keys)
// ---------------------------------------------------------------------------------------------

type updateRequest struct {
	Type  string                 `json:"type"`
	Value string                 `json:"value"`
	Set   map[string]interface{} `json:"set"`
}

// simUpdate applies {"type": "HostSystem", "value": "host-21", "set": {"summary.quickStats.
// overallMemoryUsage": 2048}} through Registry.Update, as the simulator's SET. keys do for VMs.
// JSON numbers become the field's type; a path the type does not have is refused.
func simUpdate(body io.Reader) (int, map[string]interface{}) {
	var req updateRequest
	dec := json.NewDecoder(body)
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return http.StatusBadRequest, map[string]interface{}{"error": err.Error()}
	}
	ref := types.ManagedObjectReference{Type: req.Type, Value: req.Value}
	obj := simulator.Map.Get(ref)
	if obj == nil {
		return http.StatusNotFound, map[string]interface{}{"error": fmt.Sprintf("no object %s", ref)}
	}
	var changes []types.PropertyChange
	for path, raw := range req.Set {
		val, err := jsonValueFor(obj, path, raw)
		if err != nil {
			return http.StatusBadRequest, map[string]interface{}{"error": err.Error()}
		}
		changes = append(changes, types.PropertyChange{Name: path, Val: val})
	}
	var perr interface{}
	simulator.Map.WithLock(obj, func() {
		defer func() { perr = recover() }()
		simulator.Map.Update(obj, changes)
	})
	if perr != nil {
		return http.StatusBadRequest, map[string]interface{}{"error": fmt.Sprint(perr)}
	}
	return http.StatusOK, map[string]interface{}{"updated": len(changes)}
}

// jsonValueFor converts a JSON value to the Go type of the field at path in obj.
func jsonValueFor(obj interface{}, path string, raw interface{}) (interface{}, error) {
	t := reflect.TypeOf(obj)
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	for _, part := range strings.Split(path, ".") {
		for t.Kind() == reflect.Ptr {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil, fmt.Errorf("%s: %s is not a structure", path, t)
		}
		f, ok := t.FieldByName(strings.ToUpper(part[:1]) + part[1:])
		if !ok {
			return nil, fmt.Errorf("%s: %s has no field %s", path, t, part)
		}
		t = f.Type
	}
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		num, ok := raw.(json.Number)
		if !ok {
			return nil, fmt.Errorf("%s: want an integer, got %v", path, raw)
		}
		n, err := num.Int64()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		return reflect.ValueOf(n).Convert(t).Interface(), nil
	case reflect.Bool:
		b, ok := raw.(bool)
		if !ok {
			return nil, fmt.Errorf("%s: want true or false, got %v", path, raw)
		}
		return b, nil
	case reflect.String:
		str, ok := raw.(string)
		if !ok {
			return nil, fmt.Errorf("%s: want a string, got %v", path, raw)
		}
		return reflect.ValueOf(str).Convert(t).Interface(), nil
	}
	return nil, fmt.Errorf("%s: cannot set a %s from JSON", path, t)
}

// ---------------------------------------------------------------------------------------------
// users: -username and each -user may log in
// ---------------------------------------------------------------------------------------------

// users: name -> password. The simulator itself is told to accept any non-empty pair (so a
// session carries the name its user logged in with); checkLogin refuses the others first.
var users = map[string]string{}

type userFlag struct{}

func (userFlag) String() string { return "" }

func (userFlag) Set(v string) error {
	kv := strings.SplitN(v, ":", 2)
	if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
		return fmt.Errorf("want name:password, got %q", v)
	}
	users[kv[0]] = kv[1]
	return nil
}

type loginEnvelope struct {
	Body struct {
		Login struct {
			UserName string `xml:"userName"`
			Password string `xml:"password"`
		} `xml:"Login"`
	} `xml:"Body"`
}

// checkLogin passes a Login with known credentials on unchanged; any other becomes a Login
// with an empty password, which the simulator answers with InvalidLogin as usual.
func checkLogin(body []byte) []byte {
	var env loginEnvelope
	if err := xml.Unmarshal(body, &env); err == nil {
		login := env.Body.Login
		if pass, ok := users[login.UserName]; ok && pass == login.Password {
			return body
		}
	}
	return []byte(`<?xml version="1.0" encoding="UTF-8"?>` +
		`<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>` +
		`<Login xmlns="urn:vim25"><_this type="SessionManager">` + sessionManagerRef().Value +
		`</_this><userName>refused</userName><password></password></Login>` +
		`</Body></Envelope>`)
}

// ---------------------------------------------------------------------------------------------
// QueryPerf refused for some users (/sim/perf/refuse)
// ---------------------------------------------------------------------------------------------

var refusal struct {
	sync.Mutex
	users map[string]bool
	after int64 // successful calls still allowed before the refusals start
}

type refusalRequest struct {
	Users []string `json:"users"`
	After int64    `json:"after"`
}

func setRefusal(body io.Reader) (int, map[string]interface{}) {
	var req refusalRequest
	if err := json.NewDecoder(body).Decode(&req); err != nil {
		return http.StatusBadRequest, map[string]interface{}{"error": err.Error()}
	}
	refusal.Lock()
	defer refusal.Unlock()
	refusal.users = map[string]bool{}
	for _, u := range req.Users {
		refusal.users[u] = true
	}
	refusal.after = req.After
	return http.StatusOK, map[string]interface{}{"users": req.Users, "after": req.After}
}

// refused: whether this QueryPerf of this session is to be refused (a success is counted).
func refused(ctx *simulator.Context) bool {
	if ctx.Session == nil {
		return false
	}
	refusal.Lock()
	defer refusal.Unlock()
	if !refusal.users["*"] && !refusal.users[ctx.Session.UserName] {
		return false
	}
	if refusal.after > 0 {
		refusal.after--
		return false
	}
	return true
}

func noPermission(req *types.QueryPerf) *soap.Fault {
	obj := req.This
	if len(req.QuerySpec) > 0 {
		obj = req.QuerySpec[0].Entity
	}
	return simulator.Fault("Permission to perform this operation was denied.",
		&types.NoPermission{Object: obj, PrivilegeId: "System.View"})
}

// ---------------------------------------------------------------------------------------------
// sessions (/sim/sessions)
// ---------------------------------------------------------------------------------------------

// adminSession is a session of our own that never logs in: Session.Get gives it a copy of the
// SessionManager whose SessionList the simulator fills under its own lock.
var adminSession = &simulator.Session{
	UserSession: types.UserSession{Key: "vcsim-balloon-admin"},
	Registry:    simulator.NewRegistry(),
}

func sessionManagerRef() types.ManagedObjectReference {
	return *serviceContent().SessionManager
}

func serviceContent() types.ServiceContent {
	ref := types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}
	return simulator.Map.Get(ref).(*simulator.ServiceInstance).Content
}

func currentSessions() []types.UserSession {
	sm, ok := adminSession.Get(sessionManagerRef()).(*simulator.SessionManager)
	if !ok {
		return nil
	}
	return sm.SessionList
}

func sessionList() []map[string]interface{} {
	out := []map[string]interface{}{}
	for _, s := range currentSessions() {
		out = append(out, map[string]interface{}{
			"key":              s.Key,
			"user":             s.UserName,
			"login_time":       s.LoginTime.UTC().Format(time.RFC3339Nano),
			"last_active_time": s.LastActiveTime.UTC().Format(time.RFC3339Nano),
			"call_count":       s.CallCount,
			"user_agent":       s.UserAgent,
		})
	}
	return out
}

// terminateAll ends every session, as SessionManager.TerminateSession from an admin would.
func terminateAll() []string {
	keys := []string{}
	for _, s := range currentSessions() {
		keys = append(keys, s.Key)
	}
	if len(keys) > 0 {
		sm := simulator.Map.SessionManager()
		ctx := &simulator.Context{Session: adminSession, Map: simulator.Map}
		for _, k := range keys {
			// one at a time: a session that ended meanwhile must not stop the others
			_ = sm.TerminateSession(ctx, &types.TerminateSession{This: sm.Self, SessionId: []string{k}})
		}
	}
	return keys
}

// ---------------------------------------------------------------------------------------------
// PropertyCollector: paging and authentication
// ---------------------------------------------------------------------------------------------

var pageSize int32

// pendingPages: what is left of one RetrievePropertiesEx, for the session and collector that
// asked. Kept in one table rather than on the collector: two first calls of a session racing
// could otherwise make two per-session collectors and lose a token.
type pendingPages struct {
	session   string
	collector types.ManagedObjectReference
	objects   []types.ObjectContent
	limit     int
	created   time.Time
}

const pageTTL = 30 * time.Minute // an abandoned result is dropped after this

var (
	pagesMu sync.Mutex
	pages   = map[string]*pendingPages{}
	pageSeq int64
)

// pagingPC wraps the simulator's PropertyCollector. It must embed it by value: the simulator
// makes the per-session instance of the singleton with reflect.New on the registered type.
type pagingPC struct {
	simulator.PropertyCollector
}

func notAuthenticated(this types.ManagedObjectReference) *soap.Fault {
	return simulator.Fault("The session is not authenticated.", &types.NotAuthenticated{
		NoPermission: types.NoPermission{Object: this, PrivilegeId: "System.View"},
	})
}

// anonymousAllowed: objects a client may read before logging in (or after its session died):
// ServiceInstance, and SessionManager for the currentSession liveness check.
func anonymousAllowed(specs []types.PropertyFilterSpec) bool {
	for _, spec := range specs {
		for _, o := range spec.ObjectSet {
			if len(o.SelectSet) > 0 {
				return false
			}
			switch o.Obj.Type {
			case "ServiceInstance", "SessionManager":
			default:
				return false
			}
		}
	}
	return true
}

func (pc *pagingPC) takePage(ctx *simulator.Context, this types.ManagedObjectReference,
	objects []types.ObjectContent, limit int) *types.RetrieveResult {
	res := &types.RetrieveResult{}
	if limit <= 0 || len(objects) <= limit {
		res.Objects = objects
		stats.page(len(objects))
		return res
	}
	res.Objects = objects[:limit]
	now := time.Now()
	pagesMu.Lock()
	for token, p := range pages {
		if now.Sub(p.created) > pageTTL {
			delete(pages, token)
		}
	}
	pageSeq++
	token := strconv.FormatInt(pageSeq, 10)
	pages[token] = &pendingPages{
		session: ctx.Session.Key, collector: this, objects: objects[limit:], limit: limit, created: now,
	}
	pagesMu.Unlock()
	res.Token = token
	stats.page(limit)
	return res
}

// takeToken removes and returns the pending result of a token, if it belongs to this session
// and collector (another session's token is left for its owner).
func takeToken(ctx *simulator.Context, this types.ManagedObjectReference, token string) (*pendingPages, bool) {
	pagesMu.Lock()
	defer pagesMu.Unlock()
	p, ok := pages[token]
	if !ok || p.session != ctx.Session.Key || p.collector != this {
		return nil, false
	}
	delete(pages, token)
	return p, true
}

func invalidToken() *soap.Fault {
	return simulator.Fault("A specified parameter was not correct: token", &types.InvalidArgument{InvalidProperty: "token"})
}

func (pc *pagingPC) pageLimit(opts types.RetrieveOptions) int {
	if pageSize <= 0 {
		return 0
	}
	limit := pageSize
	if opts.MaxObjects > 0 && opts.MaxObjects < limit {
		limit = opts.MaxObjects
	}
	return int(limit)
}

func (pc *pagingPC) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	if ctx.Session == nil && !anonymousAllowed(r.SpecSet) {
		return &methods.RetrievePropertiesExBody{Fault_: notAuthenticated(r.This)}
	}
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, r)
	body, ok := res.(*methods.RetrievePropertiesExBody)
	if !ok || body.Fault_ != nil || body.Res == nil {
		return res
	}
	if ctx.Session == nil { // anonymous reads are never paged
		// SessionManager.currentSession is System.Anonymous: unset, not a NotAuthenticated
		// missingSet, for a client checking whether its session is still alive.
		for i := range body.Res.Returnval.Objects {
			oc := &body.Res.Returnval.Objects[i]
			if oc.Obj.Type != "SessionManager" {
				continue
			}
			kept := oc.MissingSet[:0]
			for _, m := range oc.MissingSet {
				if m.Path != "currentSession" {
					kept = append(kept, m)
				}
			}
			oc.MissingSet = kept
		}
		stats.page(len(body.Res.Returnval.Objects))
		return body
	}
	body.Res.Returnval = pc.takePage(ctx, r.This, body.Res.Returnval.Objects, pc.pageLimit(r.Options))
	return body
}

func (pc *pagingPC) RetrieveProperties(ctx *simulator.Context, r *types.RetrieveProperties) soap.HasFault {
	if ctx.Session == nil && !anonymousAllowed(r.SpecSet) {
		return &methods.RetrievePropertiesBody{Fault_: notAuthenticated(r.This)}
	}
	res := pc.PropertyCollector.RetrieveProperties(ctx, r)
	if body, ok := res.(*methods.RetrievePropertiesBody); ok && body.Res != nil {
		stats.page(len(body.Res.Returnval))
	}
	return res
}

func (pc *pagingPC) ContinueRetrievePropertiesEx(ctx *simulator.Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	if ctx.Session == nil {
		body.Fault_ = notAuthenticated(r.This)
		return body
	}
	p, ok := takeToken(ctx, r.This, r.Token)
	if !ok {
		body.Fault_ = invalidToken()
		return body
	}
	res := pc.takePage(ctx, r.This, p.objects, p.limit)
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: *res}
	return body
}

func (pc *pagingPC) CancelRetrievePropertiesEx(ctx *simulator.Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	body := &methods.CancelRetrievePropertiesExBody{}
	if ctx.Session == nil {
		body.Fault_ = notAuthenticated(r.This)
		return body
	}
	if _, ok := takeToken(ctx, r.This, r.Token); !ok {
		body.Fault_ = invalidToken()
		return body
	}
	body.Res = &types.CancelRetrievePropertiesExResponse{}
	return body
}

// FetchResponse is named like the simulator's internal type: the SOAP reply element takes the
// Go type's name.
type FetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *FetchResponse `xml:"FetchResponse,omitempty"`
	Fault_ *soap.Fault    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

// Fetch (pyvmomi's property accessor) answers SessionManager.currentSession with nothing when
// the caller has no session, as vCenter does (the property is System.Anonymous), instead of the
// stock simulator's NotAuthenticated. The request type is internal to the simulator package,
// hence interface{} and reflection.
func (pc *pagingPC) Fetch(ctx *simulator.Context, req interface{}) soap.HasFault {
	rv := reflect.ValueOf(req)
	if ctx.Session == nil && rv.Kind() == reflect.Ptr && rv.Elem().Kind() == reflect.Struct {
		this, _ := rv.Elem().FieldByName("This").Interface().(types.ManagedObjectReference)
		prop := rv.Elem().FieldByName("Prop").String()
		if this.Type == "SessionManager" && prop == "currentSession" {
			return &fetchBody{Res: &FetchResponse{}}
		}
	}
	out := reflect.ValueOf(&pc.PropertyCollector).MethodByName("Fetch").Call(
		[]reflect.Value{reflect.ValueOf(ctx), rv})
	return out[0].Interface().(soap.HasFault)
}

// CreatePropertyCollector makes collectors that page as well.
func (pc *pagingPC) CreatePropertyCollector(ctx *simulator.Context, c *types.CreatePropertyCollector) soap.HasFault {
	body := &methods.CreatePropertyCollectorBody{}
	if ctx.Session == nil {
		body.Fault_ = notAuthenticated(c.This)
		return body
	}
	cpc := &pagingPC{}
	body.Res = &types.CreatePropertyCollectorResponse{Returnval: ctx.Session.Put(cpc).Reference()}
	return body
}

// ---------------------------------------------------------------------------------------------
// PerformanceManager: per-VM values and maxQueryMetrics
// ---------------------------------------------------------------------------------------------

// PerfMetricIntSeries is encoded as xsi:type="PerfMetricIntSeries" (the Go type name) but,
// unlike types.PerfMetricIntSeries, keeps zero values (that field is omitempty per element).
type PerfMetricIntSeries struct {
	types.PerfMetricSeries

	Value []int64 `xml:"value"`
}

type perfManager struct {
	*simulator.PerformanceManager
	names map[int32]string // counter key -> group.name.rollup
}

// Get hands the PropertyCollector the simulator's object (it needs an embedded mo type).
func (p *perfManager) Get() mo.Reference { return p.PerformanceManager }

func newPerfManager(pm *simulator.PerformanceManager) *perfManager {
	p := &perfManager{PerformanceManager: pm, names: map[int32]string{}}
	for _, c := range pm.PerfCounter {
		p.names[c.Key] = c.GroupInfo.GetElementDescription().Key + "." +
			c.NameInfo.GetElementDescription().Key + "." + string(c.RollupType)
	}
	return p
}

func optionInt(v interface{}) (int64, bool) {
	switch x := v.(type) {
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	case int16:
		return int64(x), true
	case int8:
		return int64(x), true
	case float64:
		return int64(x), true
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func currentMaxQueryMetrics() int64 {
	om := simulator.Map.OptionManager()
	var limit int64 = -1
	simulator.Map.WithLock(om, func() {
		for _, opt := range om.Setting {
			o := opt.GetOptionValue()
			if o.Key == maxQueryMetricsKey {
				if n, ok := optionInt(o.Value); ok {
					limit = n
				}
			}
		}
	})
	return limit
}

var limitHistoricalOnly bool

// vmValues reads what the counters of one VM derive from.
type vmValues struct {
	exists    bool
	poweredOn bool
	quick     types.VirtualMachineQuickStats
	forced    map[string]int64
	lag       time.Duration // sim.perf_lag_s: how far behind its newest sample is
	omit      bool          // sim.perf_omit: left out of QueryPerf replies
}

func readVM(ctx *simulator.Context, ref types.ManagedObjectReference) vmValues {
	var out vmValues
	obj := simulator.Map.Get(ref)
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return out
	}
	ctx.WithLock(vm, func() {
		out.exists = true
		out.poweredOn = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		out.quick = vm.Summary.QuickStats
		out.forced = map[string]int64{}
		if vm.Config != nil {
			for _, opt := range vm.Config.ExtraConfig {
				o := opt.GetOptionValue()
				switch o.Key {
				case "sim.perf_lag_s":
					if n, ok := optionInt(o.Value); ok {
						out.lag = time.Duration(n) * time.Second
					}
				case "sim.perf_omit":
					if n, ok := optionInt(o.Value); ok {
						out.omit = n != 0
					}
				}
				if !strings.HasPrefix(o.Key, "sim.perf.") {
					continue
				}
				if n, ok := optionInt(o.Value); ok {
					out.forced[strings.TrimPrefix(o.Key, "sim.perf.")] = n // the last one wins
				}
			}
		}
	})
	return out
}

// counterValue: the value of counter group.name.rollup for a VM, and whether it has one.
func counterValue(v vmValues, name string) (int64, bool) {
	if n, ok := v.forced[name]; ok {
		return n, true
	}
	parts := strings.SplitN(name, ".", 3)
	if len(parts) != 3 || parts[0] != "mem" {
		return 0, false
	}
	q := v.quick
	switch parts[1] {
	case "vmmemctl":
		return int64(q.BalloonedMemory) * 1024, true
	case "vmmemctltarget":
		return 0, true
	case "swapped":
		return int64(q.SwappedMemory) * 1024, true
	case "compressed":
		return q.CompressedMemory, true
	case "consumed":
		return int64(q.HostMemoryUsage) * 1024, true
	case "active":
		return int64(q.GuestMemoryUsage) * 1024, true
	case "granted":
		return int64(q.GrantedMemory) * 1024, true
	case "shared":
		return int64(q.SharedMemory) * 1024, true
	case "overhead":
		return int64(q.ConsumedOverheadMemory) * 1024, true
	}
	return 0, false
}

func (p *perfManager) countMetrics(ctx *simulator.Context, req *types.QueryPerf) int {
	total := 0
	for _, qs := range req.QuerySpec {
		if len(qs.MetricId) > 0 {
			total += len(qs.MetricId)
			continue
		}
		// no metricId: every available metric of the entity
		res := p.PerformanceManager.QueryAvailablePerfMetric(ctx, &types.QueryAvailablePerfMetric{
			This: req.This, Entity: qs.Entity, IntervalId: qs.IntervalId,
		})
		if b, ok := res.(*methods.QueryAvailablePerfMetricBody); ok && b.Res != nil {
			total += len(b.Res.Returnval)
		}
	}
	return total
}

func (p *perfManager) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	body := new(methods.QueryPerfBody)
	if refused(ctx) {
		stats.denied()
		body.Fault_ = noPermission(req)
		return body
	}
	total := p.countMetrics(ctx, req)

	limit := currentMaxQueryMetrics()
	applies := true
	if limitHistoricalOnly {
		applies = false
		for _, qs := range req.QuerySpec {
			if qs.IntervalId != 20 && qs.IntervalId > 0 {
				applies = true
			}
		}
	}
	if applies && limit > 0 && int64(total) > limit {
		stats.perf(len(req.QuerySpec), total, true)
		body.Fault_ = simulator.Fault(
			"This operation is restricted by the administrator - 'vpxd.stats.maxQueryMetrics'. Contact your system administrator.",
			&types.RestrictedByAdministrator{Details: "vpxd.stats.maxQueryMetrics"})
		return body
	}
	stats.perf(len(req.QuerySpec), total, false)

	body.Res = new(types.QueryPerfResponse)
	for _, qs := range req.QuerySpec {
		if qs.Entity.Type != "VirtualMachine" {
			one := *req
			one.QuerySpec = []types.PerfQuerySpec{qs}
			res := p.PerformanceManager.QueryPerf(ctx, &one)
			b, ok := res.(*methods.QueryPerfBody)
			if !ok || b.Fault_ != nil {
				return res
			}
			body.Res.Returnval = append(body.Res.Returnval, b.Res.Returnval...)
			continue
		}
		m, fault := p.vmMetrics(ctx, qs)
		if fault != nil {
			body.Res = nil
			body.Fault_ = fault
			return body
		}
		if m != nil {
			body.Res.Returnval = append(body.Res.Returnval, m)
		}
	}
	return body
}

const realtimeSamples = 180 // one hour of 20 s samples, what vCenter keeps in realtime

func (p *perfManager) vmMetrics(ctx *simulator.Context, qs types.PerfQuerySpec) (types.BasePerfEntityMetricBase, *soap.Fault) {
	v := readVM(ctx, qs.Entity)
	if !v.exists {
		return nil, simulator.Fault("The object has already been deleted or has not been completely created",
			&types.ManagedObjectNotFound{Obj: qs.Entity})
	}
	if v.omit {
		return nil, nil
	}
	metrics := &types.PerfEntityMetric{}
	metrics.Entity = qs.Entity

	interval := qs.IntervalId
	if interval <= 0 {
		interval = 20
	}
	// vCenter has no realtime statistics for a VM that is not running.
	if interval == 20 && !v.poweredOn {
		return metrics, nil
	}

	step := time.Duration(interval) * time.Second
	end := time.Now().UTC().Add(-v.lag)
	if qs.EndTime != nil && qs.EndTime.Before(end) {
		end = qs.EndTime.UTC()
	}
	latest := end.Truncate(step)
	n := int(qs.MaxSample)
	if n <= 0 {
		n = realtimeSamples
		if interval != 20 {
			n = 1
		}
	}
	var stamps []time.Time
	for k := n - 1; k >= 0; k-- {
		ts := latest.Add(-time.Duration(k) * step)
		if qs.StartTime != nil && !ts.After(*qs.StartTime) {
			continue
		}
		stamps = append(stamps, ts)
	}
	if len(stamps) == 0 {
		return metrics, nil
	}
	for _, ts := range stamps {
		metrics.SampleInfo = append(metrics.SampleInfo, types.PerfSampleInfo{Timestamp: ts, Interval: interval})
	}

	ids := qs.MetricId
	if len(ids) == 0 {
		for key := range p.names {
			if _, ok := counterValue(v, p.names[key]); ok {
				ids = append(ids, types.PerfMetricId{CounterId: key})
			}
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i].CounterId < ids[j].CounterId })
	}
	var canned []types.PerfMetricId
	for _, id := range ids {
		name, known := p.names[id.CounterId]
		if !known {
			return nil, simulator.Fault("", &types.InvalidArgument{InvalidProperty: "metricId"})
		}
		val, ok := counterValue(v, name)
		if !ok {
			canned = append(canned, id)
			continue
		}
		if id.Instance == "*" {
			id.Instance = ""
		}
		series := &PerfMetricIntSeries{Value: make([]int64, len(stamps))}
		series.Id = id
		for i := range series.Value {
			series.Value[i] = val
		}
		metrics.Value = append(metrics.Value, series)
	}
	if len(canned) > 0 {
		metrics.Value = append(metrics.Value, p.cannedSeries(ctx, qs.Entity, canned, interval, len(stamps))...)
	}
	return metrics, nil
}

// cannedSeries: the stock simulator's recorded data for counters we do not derive (cpu.*,
// net.*, ...), re-timed onto our samples (its newest sample comes first). A counter with no
// recorded data (all zeros) is left out, as vCenter leaves out counters it did not collect.
func (p *perfManager) cannedSeries(ctx *simulator.Context, entity types.ManagedObjectReference,
	ids []types.PerfMetricId, interval int32, n int) []types.BasePerfMetricSeries {
	res := p.PerformanceManager.QueryPerf(ctx, &types.QueryPerf{QuerySpec: []types.PerfQuerySpec{{
		Entity: entity, MetricId: ids, IntervalId: interval, MaxSample: int32(n),
	}}})
	body, ok := res.(*methods.QueryPerfBody)
	if !ok || body.Res == nil || len(body.Res.Returnval) == 0 {
		return nil
	}
	em, ok := body.Res.Returnval[0].(*types.PerfEntityMetric)
	if !ok {
		return nil
	}
	var out []types.BasePerfMetricSeries
	for _, base := range em.Value {
		stock, ok := base.(*types.PerfMetricIntSeries)
		if !ok || len(stock.Value) != n {
			continue
		}
		nonzero := false
		series := &PerfMetricIntSeries{Value: make([]int64, n)}
		series.Id = stock.Id
		if series.Id.Instance == "*" {
			series.Id.Instance = ""
		}
		for i := range series.Value {
			series.Value[i] = stock.Value[n-1-i]
			nonzero = nonzero || series.Value[i] != 0
		}
		if nonzero {
			out = append(out, series)
		}
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// TLS certificate
// ---------------------------------------------------------------------------------------------

func selfSigned() (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	ski := sha1.Sum(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "127.0.0.1", Organization: []string{"telegraf-balloon vcsim"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski[:],
		AuthorityKeyId:        ski[:],
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPEM, keyPEM, err
}

// loadOrCreateCert reuses certFile+keyFile when both exist, else makes a new pair (and writes
// the key to keyFile when given; main writes the certificate).
func loadOrCreateCert(certFile, keyFile string) (tls.Certificate, []byte, error) {
	if certFile != "" && keyFile != "" {
		certPEM, err1 := ioutil.ReadFile(certFile)
		keyPEM, err2 := ioutil.ReadFile(keyFile)
		if err1 == nil && err2 == nil {
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err == nil {
				return cert, certPEM, nil
			}
		}
	}
	cert, certPEM, keyPEM, err := selfSigned()
	if err != nil {
		return cert, nil, err
	}
	if keyFile != "" {
		if err := ioutil.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			return cert, nil, err
		}
	}
	return cert, certPEM, nil
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	dc := flag.Int("dc", 1, "datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 3, "hosts per cluster")
	standalone := flag.Int("standalone-host", 1, "standalone hosts per datacenter")
	vm := flag.Int("vm", 2, "VMs per cluster (in its root resource pool) and per standalone host")
	pool := flag.Int("pool", 0, "child resource pools per cluster (they hold no VMs)")
	username := flag.String("username", "user", "the only user name that logs in")
	password := flag.String("password", "pass", "its password")
	flag.Var(userFlag{}, "user", "another user that may log in, name:password (repeatable)")
	page := flag.Int("page", 0, "page size of RetrievePropertiesEx (0: one reply, like the stock simulator)")
	maxQueryMetrics := flag.Int("max-query-metrics", 64, "config.vpxd.stats.maxQueryMetrics (<= 0: unlimited)")
	historicalOnly := flag.Bool("max-query-metrics-historical-only", false, "enforce maxQueryMetrics only for historical (intervalId != 20) queries")
	certOut := flag.String("cert-out", "", "write the server certificate (PEM) here")
	keyFile := flag.String("key-file", "", "with -cert-out: reuse this key and that certificate if both exist, else write the new key here (a restart keeps its certificate)")
	noTLS := flag.Bool("no-tls", false, "serve plain http")
	autostart := flag.Bool("autostart", true, "power on the model's VMs")
	sessionIdle := flag.Duration("session-idle-timeout", 0, "expire sessions idle this long (0: never)")
	delayMs := flag.Int("delay-ms", 0, "delay every SOAP call this many milliseconds (network latency)")
	methodDelay := flag.String("method-delay", "", "extra delay per method, e.g. QueryPerf=50,RetrievePropertiesEx=20 (ms)")
	flag.Parse()

	log.SetOutput(os.Stderr)
	log.SetPrefix("vcsim: ")

	pageSize = int32(*page)
	limitHistoricalOnly = *historicalOnly
	simulator.SessionIdleTimeout = *sessionIdle

	m := simulator.VPX()
	m.Datacenter = *dc
	m.Cluster = *cluster
	m.ClusterHost = *host
	m.Host = *standalone
	m.Machine = *vm
	m.Pool = *pool
	m.Autostart = *autostart

	started := time.Now()
	if err := m.Create(); err != nil {
		log.Fatalf("model: %v", err)
	}
	// Create has set the service's delay to m.DelayConfig: fill it in now (not during Create).
	m.DelayConfig.Delay = *delayMs
	if *methodDelay != "" {
		m.DelayConfig.MethodDelay = map[string]int{}
		for _, item := range strings.Split(*methodDelay, ",") {
			kv := strings.SplitN(strings.TrimSpace(item), "=", 2)
			ms, err := strconv.Atoi(strings.TrimSpace(kv[len(kv)-1]))
			if len(kv) != 2 || err != nil {
				log.Fatalf("-method-delay: %q is not Method=milliseconds", item)
			}
			m.DelayConfig.MethodDelay[strings.TrimSpace(kv[0])] = ms
		}
	}
	defer m.Remove()

	// Overrides: the PropertyCollector singleton and the PerformanceManager.
	content := serviceContent()
	pc := simulator.Map.Get(content.PropertyCollector).(*simulator.PropertyCollector)
	wrapped := &pagingPC{}
	wrapped.Self = pc.Self
	simulator.Map.Put(wrapped)
	pm := simulator.Map.Get(*content.PerfManager).(*simulator.PerformanceManager)
	simulator.Map.Put(newPerfManager(pm))

	om := simulator.Map.OptionManager()
	om.Setting = append(om.Setting, &types.OptionValue{Key: maxQueryMetricsKey, Value: strconv.Itoa(*maxQueryMetrics)})

	var certPEM []byte
	if !*noTLS {
		cert, pemBytes, err := loadOrCreateCert(*certOut, *keyFile)
		if err != nil {
			log.Fatalf("certificate: %v", err)
		}
		certPEM = pemBytes
		m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	users[*username] = *password
	// DefaultLogin: the simulator accepts any non-empty credentials; checkLogin has let only
	// the known ones through.
	m.Service.Listen = &url.URL{Host: *listen, User: simulator.DefaultLogin}

	s := m.Service.NewServer()
	// Count calls, and serve /sim/*. No request can have arrived yet: the address is not printed.
	s.Config.Handler = countingHandler(s.Config.Handler)

	if *certOut != "" && certPEM != nil {
		if err := ioutil.WriteFile(*certOut, certPEM, 0o644); err != nil {
			log.Fatalf("cert-out: %v", err)
		}
	}
	if *noTLS {
		*certOut = ""
	}

	u := *s.URL
	u.User = nil
	vms := len(simulator.Map.All("VirtualMachine"))
	hosts := len(simulator.Map.All("HostSystem"))
	line, _ := json.Marshal(map[string]interface{}{
		"url":               u.String(),
		"host":              u.Hostname(),
		"port":              u.Port(),
		"cert_file":         *certOut,
		"username":          *username,
		"vms":               vms,
		"hosts":             hosts,
		"pid":               os.Getpid(),
		"startup_s":         time.Since(started).Seconds(),
		"page":              *page,
		"max_query_metrics": *maxQueryMetrics,
	})
	fmt.Println(string(line))
	_ = os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	s.Close()
	_, _ = io.WriteString(os.Stderr, "vcsim: stopped\n")
}
